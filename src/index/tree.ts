import { FormatError } from '../util/errors.js'

interface NodeBase {
  ino: number
  mode: number // permission bits only
  uid: number
  gid: number
  mtimeMs: number
}
export interface DirectoryNode extends NodeBase {
  kind: 'directory'
  children: Map<string, TreeNode>
}
/** A regular file: its bytes are `size` bytes at `offset` of layer `layer`'s (uncompressed) content. */
export interface FileNode extends NodeBase {
  kind: 'file'
  size: number
  layer: number
  offset: number
  /** Number of names pointing at this node (hard links share one FileNode). */
  nlink: number
}
export interface SymlinkNode extends NodeBase {
  kind: 'symlink'
  target: string
}
export type TreeNode = DirectoryNode | FileNode | SymlinkNode

/** One line of the persisted index: a path and what is there. Hard links name the path they share data with. */
export type IndexEntry =
  | { path: string; kind: 'directory'; mode: number; uid: number; gid: number; mtimeMs: number }
  | { path: string; kind: 'file'; mode: number; uid: number; gid: number; mtimeMs: number; size: number; layer: number; offset: number }
  | { path: string; kind: 'symlink'; mode: number; uid: number; gid: number; mtimeMs: number; target: string }
  | { path: string; kind: 'hardlink'; link: string }

export interface NodeOwner {
  layer: number
  what: string // e.g. "layer 3 (sha256:…) entry model/a.bin": used in collision errors
}

/**
 * The model's file tree: one root directory, paths relative to it. Built once from the layers, then read-only,
 * so lookups need no locking. Inode numbers are assigned in insertion order and stable for a given index.
 */
export class FileTree {
  readonly root: DirectoryNode
  private nextIno = 2
  private readonly owners = new Map<TreeNode, NodeOwner>()
  /** Time for directories nobody described (implicit parents). */
  private readonly defaultMtimeMs: number

  constructor(defaultMtimeMs = 0) {
    this.defaultMtimeMs = defaultMtimeMs
    this.root = { kind: 'directory', ino: 1, mode: 0o755, uid: 0, gid: 0, mtimeMs: defaultMtimeMs, children: new Map() }
  }

  lookup(path: string): TreeNode | undefined {
    let node: TreeNode = this.root
    for (const part of splitPath(path)) {
      if (node.kind !== 'directory') return undefined
      const next: TreeNode | undefined = node.children.get(part)
      if (!next) return undefined
      node = next
    }
    return node
  }

  /**
   * Places a node at `path`. Directories merge with directories; anything else at an occupied path is a
   * collision, unless the same layer wrote it before (tar semantics: the later entry wins).
   */
  add(path: string, node: Omit<DirectoryNode, 'ino' | 'children'> | Omit<FileNode, 'ino' | 'nlink'> | Omit<SymlinkNode, 'ino'>, owner: NodeOwner): TreeNode {
    const parts = splitPath(path)
    if (parts.length === 0) {
      if (node.kind === 'directory') { Object.assign(this.root, pickMeta(node)); return this.root }
      throw new FormatError(`${owner.what}: cannot replace the model root`)
    }
    const parent = this.ensureDirectory(parts.slice(0, -1), owner)
    const name = parts[parts.length - 1]
    const existing = parent.children.get(name)
    if (existing) {
      if (existing.kind === 'directory' && node.kind === 'directory') {
        Object.assign(existing, pickMeta(node))
        return existing
      }
      const prior = this.owners.get(existing)
      if (!prior || prior.layer !== owner.layer) {
        throw new FormatError(`${owner.what} collides with ${prior?.what ?? 'an earlier entry'} at ${path}`)
      }
      if (existing.kind === 'directory' && existing.children.size > 0) {
        throw new FormatError(`${owner.what} replaces the non-empty directory ${path}`)
      }
    }
    const created: TreeNode = node.kind === 'directory'
      ? { ...node, ino: this.nextIno++, children: new Map() }
      : node.kind === 'file'
        ? { ...node, ino: this.nextIno++, nlink: 1 }
        : { ...node, ino: this.nextIno++ }
    parent.children.set(name, created)
    this.owners.set(created, owner)
    return created
  }

  /** A hard link: a second name for an existing file node of the same layer. */
  link(path: string, targetPath: string, owner: NodeOwner): void {
    const target = this.lookup(targetPath)
    if (!target || target.kind !== 'file') throw new FormatError(`${owner.what}: hard link target ${targetPath} is not a file in the model`)
    const parts = splitPath(path)
    if (parts.length === 0) throw new FormatError(`${owner.what}: cannot link over the model root`)
    const parent = this.ensureDirectory(parts.slice(0, -1), owner)
    const name = parts[parts.length - 1]
    const existing = parent.children.get(name)
    if (existing) {
      const prior = this.owners.get(existing)
      if (!prior || prior.layer !== owner.layer || existing.kind === 'directory') throw new FormatError(`${owner.what} collides with ${prior?.what ?? 'an earlier entry'} at ${path}`)
      if (existing === target) return
    }
    parent.children.set(name, target)
    target.nlink++
  }

  private ensureDirectory(parts: string[], owner: NodeOwner): DirectoryNode {
    let dir = this.root
    for (const part of parts) {
      const next = dir.children.get(part)
      if (!next) {
        const created: DirectoryNode = { kind: 'directory', ino: this.nextIno++, mode: 0o755, uid: 0, gid: 0, mtimeMs: this.defaultMtimeMs, children: new Map() }
        dir.children.set(part, created)
        this.owners.set(created, owner)
        dir = created
      } else if (next.kind === 'directory') {
        dir = next
      } else {
        throw new FormatError(`${owner.what}: a parent of the entry is a ${next.kind} (${this.owners.get(next)?.what ?? 'earlier entry'})`)
      }
    }
    return dir
  }

  /** Depth-first walk in name order; `path` is relative ('' for the root). */
  *walk(dir: DirectoryNode = this.root, prefix = ''): Generator<{ path: string; node: TreeNode }> {
    if (prefix === '') yield { path: '', node: dir }
    for (const name of [...dir.children.keys()].sort()) {
      const node = dir.children.get(name) as TreeNode
      const path = prefix ? `${prefix}/${name}` : name
      yield { path, node }
      if (node.kind === 'directory') yield* this.walk(node, path)
    }
  }

  /** Flattens the tree for persistence; the first name of a hard-linked node holds the data, others link to it. */
  toEntries(): IndexEntry[] {
    const seen = new Map<TreeNode, string>()
    const entries: IndexEntry[] = []
    for (const { path, node } of this.walk()) {
      if (path === '') continue
      const first = seen.get(node)
      if (first !== undefined) { entries.push({ path, kind: 'hardlink', link: first }); continue }
      seen.set(node, path)
      const meta = { mode: node.mode, uid: node.uid, gid: node.gid, mtimeMs: node.mtimeMs }
      if (node.kind === 'directory') entries.push({ path, kind: 'directory', ...meta })
      else if (node.kind === 'file') entries.push({ path, kind: 'file', ...meta, size: node.size, layer: node.layer, offset: node.offset })
      else entries.push({ path, kind: 'symlink', ...meta, target: node.target })
    }
    return entries
  }

  static fromEntries(entries: IndexEntry[], defaultMtimeMs = 0, rootMeta?: Partial<DirectoryNode>): FileTree {
    const tree = new FileTree(defaultMtimeMs)
    if (rootMeta) Object.assign(tree.root, rootMeta)
    for (const e of entries) {
      const owner = { layer: e.kind === 'file' ? e.layer : -1, what: `index entry ${e.path}` }
      if (e.kind === 'hardlink') tree.link(e.path, e.link, owner)
      else if (e.kind === 'directory') tree.add(e.path, { kind: 'directory', mode: e.mode, uid: e.uid, gid: e.gid, mtimeMs: e.mtimeMs }, owner)
      else if (e.kind === 'file') tree.add(e.path, { kind: 'file', mode: e.mode, uid: e.uid, gid: e.gid, mtimeMs: e.mtimeMs, size: e.size, layer: e.layer, offset: e.offset }, owner)
      else tree.add(e.path, { kind: 'symlink', mode: e.mode, uid: e.uid, gid: e.gid, mtimeMs: e.mtimeMs, target: e.target }, owner)
    }
    return tree
  }

  stats(): { files: number; directories: number; symlinks: number; bytes: number } {
    const s = { files: 0, directories: 0, symlinks: 0, bytes: 0 }
    const counted = new Set<TreeNode>()
    for (const { node } of this.walk()) {
      if (node.kind === 'directory') s.directories++
      else if (node.kind === 'symlink') s.symlinks++
      else if (!counted.has(node)) { counted.add(node); s.files++; s.bytes += node.size }
    }
    return s
  }
}

function pickMeta(n: { mode: number; uid: number; gid: number; mtimeMs: number }) {
  return { mode: n.mode, uid: n.uid, gid: n.gid, mtimeMs: n.mtimeMs }
}

export function splitPath(path: string): string[] {
  return path.split('/').filter((p) => p !== '' && p !== '.')
}
