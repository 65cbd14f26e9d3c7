import { describe, expect, it } from 'vitest'
import { FileTree, splitPath, type FileNode, type IndexEntry } from '../../src/index/tree.js'
import { FormatError } from '../../src/util/errors.js'

const meta = { mode: 0o644, uid: 0, gid: 0, mtimeMs: 1000 }
const file = (layer: number, size = 10, offset = 512) => ({ kind: 'file' as const, ...meta, size, layer, offset })
const dir = (mode = 0o755) => ({ kind: 'directory' as const, mode, uid: 1, gid: 2, mtimeMs: 2000 })
const owner = (layer: number, what: string) => ({ layer, what: `layer ${layer} ${what}` })

describe('FileTree.add', () => {
  it('creates implicit parent directories with default metadata and the default mtime', () => {
    const t = new FileTree(5000)
    t.add('a/b/c.bin', file(0), owner(0, 'c'))
    expect(t.lookup('a')).toMatchObject({ kind: 'directory', mode: 0o755, uid: 0, gid: 0, mtimeMs: 5000 })
    expect(t.lookup('a/b')).toMatchObject({ kind: 'directory' })
    expect(t.lookup('a/b/c.bin')).toMatchObject({ kind: 'file', size: 10, layer: 0, offset: 512, nlink: 1 })
    expect(t.root.mtimeMs).toBe(5000)
  })

  it('looks paths up with or without leading, trailing, repeated slashes and "."', () => {
    const t = new FileTree()
    t.add('a/b.bin', file(0), owner(0, 'b'))
    for (const p of ['a/b.bin', '/a/b.bin', 'a//b.bin', './a/./b.bin']) expect(t.lookup(p)?.kind, p).toBe('file')
    expect(t.lookup('')).toBe(t.root)
    expect(t.lookup('/')).toBe(t.root)
    expect(t.lookup('a/b.bin/x')).toBeUndefined()
    expect(t.lookup('nope')).toBeUndefined()
    expect(splitPath('/a//b/./c/')).toEqual(['a', 'b', 'c'])
  })

  it('merges directories: an explicit entry gives an implicit directory its metadata, from any layer', () => {
    const t = new FileTree()
    t.add('models/llm/w.bin', file(0), owner(0, 'w'))
    const implicit = t.lookup('models')
    t.add('models', dir(0o750), owner(1, 'models/'))
    expect(t.lookup('models')).toBe(implicit) // same node, children kept
    expect(t.lookup('models')).toMatchObject({ mode: 0o750, uid: 1, gid: 2, mtimeMs: 2000 })
    expect(t.lookup('models/llm/w.bin')).toBeDefined()
  })

  it('a directory entry for the root sets the root\'s metadata; anything else at the root is refused', () => {
    const t = new FileTree()
    t.add('.', dir(0o700), owner(0, './'))
    expect(t.root.mode).toBe(0o700)
    expect(() => t.add('', file(0), owner(0, 'x'))).toThrow(/cannot replace the model root/)
  })

  it('refuses two layers placing the same path, naming both', () => {
    const t = new FileTree()
    t.add('weights/model.bin', file(0), owner(0, 'file weights/model.bin'))
    let err: unknown
    try {
      t.add('weights/model.bin', file(1), owner(1, 'entry weights/model.bin'))
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(FormatError)
    expect((err as Error).message).toBe('layer 1 entry weights/model.bin collides with layer 0 file weights/model.bin at weights/model.bin')
  })

  it('refuses a file over a directory of another layer, and a directory over another layer\'s file', () => {
    const t = new FileTree()
    t.add('docs/readme.md', file(0), owner(0, 'readme'))
    expect(() => t.add('docs', file(1), owner(1, 'docs-file'))).toThrow(/layer 1 docs-file collides with layer 0 readme at docs/)
    t.add('bin', file(0), owner(0, 'bin-file'))
    expect(() => t.add('bin', dir(), owner(2, 'bin-dir'))).toThrow(/layer 2 bin-dir collides with layer 0 bin-file/)
  })

  it('refuses an entry whose parent is a file, naming the owner of that file', () => {
    const t = new FileTree()
    t.add('docs', file(0), owner(0, 'file docs'))
    expect(() => t.add('docs/readme.md', file(1), owner(1, 'file docs/readme.md'))).toThrow(/layer 1 file docs\/readme\.md: a parent of the entry is a file \(layer 0 file docs\)/)
  })

  it('within one layer, a later entry replaces an earlier one (tar semantics)', () => {
    const t = new FileTree()
    t.add('a.bin', file(3, 10, 512), owner(3, 'first'))
    t.add('a.bin', file(3, 20, 2048), owner(3, 'second'))
    expect(t.lookup('a.bin')).toMatchObject({ size: 20, offset: 2048 })
    t.add('a.bin', { kind: 'symlink', ...meta, target: 'b.bin' }, owner(3, 'third'))
    expect(t.lookup('a.bin')).toMatchObject({ kind: 'symlink', target: 'b.bin' })
    // ... but not over a directory that already has children
    t.add('d/x', file(3), owner(3, 'x'))
    expect(() => t.add('d', file(3), owner(3, 'd-file'))).toThrow(/replaces the non-empty directory d/)
  })

  it('assigns increasing inode numbers in insertion order, the root being 1', () => {
    const t = new FileTree()
    t.add('b/x', file(0), owner(0, 'x'))
    t.add('a', file(0), owner(0, 'a'))
    expect(t.root.ino).toBe(1)
    expect([t.lookup('b')!.ino, t.lookup('b/x')!.ino, t.lookup('a')!.ino]).toEqual([2, 3, 4])
  })
})

describe('FileTree.link (hard links)', () => {
  it('gives a file a second name sharing one node; stats count it once', () => {
    const t = new FileTree()
    t.add('w/shard.bin', file(0, 100), owner(0, 'shard'))
    t.link('w/alias.bin', 'w/shard.bin', owner(0, 'alias'))
    t.link('other/dir/alias2.bin', 'w/shard.bin', owner(0, 'alias2'))
    const node = t.lookup('w/shard.bin') as FileNode
    expect(t.lookup('w/alias.bin')).toBe(node)
    expect(t.lookup('other/dir/alias2.bin')).toBe(node)
    expect(node.nlink).toBe(3)
    expect(t.stats()).toEqual({ files: 1, directories: 4, symlinks: 0, bytes: 100 })
  })

  it('refuses links to missing paths, directories and symlinks', () => {
    const t = new FileTree()
    t.add('d/f', file(0), owner(0, 'f'))
    t.add('s', { kind: 'symlink', ...meta, target: 'd/f' }, owner(0, 's'))
    expect(() => t.link('x', 'missing', owner(0, 'x'))).toThrow(/hard link target missing is not a file/)
    expect(() => t.link('x', 'd', owner(0, 'x'))).toThrow(/hard link target d is not a file/)
    expect(() => t.link('x', 's', owner(0, 'x'))).toThrow(/hard link target s is not a file/)
    expect(() => t.link('', 'd/f', owner(0, 'x'))).toThrow(/model root/)
  })

  it('refuses a link over another layer\'s entry or a directory; relinking the same name is a no-op', () => {
    const t = new FileTree()
    t.add('a', file(0), owner(0, 'a'))
    t.add('b', file(1), owner(1, 'b'))
    t.add('dir/x', file(1), owner(1, 'x'))
    expect(() => t.link('b', 'a', owner(0, 'link b'))).toThrow(/layer 0 link b collides with layer 1 b at b/)
    expect(() => t.link('dir', 'dir/x', owner(1, 'link dir'))).toThrow(/collides/)
    t.link('c', 'a', owner(0, 'c'))
    t.link('c', 'a', owner(0, 'c again'))
    expect((t.lookup('a') as FileNode).nlink).toBe(2)
  })
})

describe('FileTree walk, stats, toEntries and fromEntries', () => {
  function sample(): FileTree {
    const t = new FileTree(7000)
    t.add('z.bin', file(0, 5, 0), owner(0, 'z'))
    t.add('models/llm/model.gguf', { ...file(1, 300, 1024), mode: 0o640, uid: 1000 }, owner(1, 'gguf'))
    t.add('models', dir(0o750), owner(1, 'models/'))
    t.add('models/empty', dir(), owner(1, 'empty/'))
    t.add('models/latest', { kind: 'symlink', ...meta, target: 'llm/model.gguf' }, owner(1, 'latest'))
    t.link('models/llm/hard.gguf', 'models/llm/model.gguf', owner(1, 'hard'))
    t.add('a/b/c.txt', file(2, 7, 512), owner(2, 'c'))
    return t
  }

  it('walks depth-first in name order, root first', () => {
    expect([...sample().walk()].map((e) => e.path)).toEqual([
      '', 'a', 'a/b', 'a/b/c.txt', 'models', 'models/empty', 'models/latest', 'models/llm', 'models/llm/hard.gguf', 'models/llm/model.gguf', 'z.bin',
    ])
  })

  it('counts files, directories, symlinks and bytes', () => {
    expect(sample().stats()).toEqual({ files: 3, directories: 6, symlinks: 1, bytes: 5 + 300 + 7 })
  })

  it('flattens to entries where the first name of a hard-linked file holds the data', () => {
    const entries = sample().toEntries()
    expect(entries.find((e) => e.path === 'models/llm/hard.gguf')).toEqual({ path: 'models/llm/hard.gguf', kind: 'file', mode: 0o640, uid: 1000, gid: 0, mtimeMs: 1000, size: 300, layer: 1, offset: 1024 })
    expect(entries.find((e) => e.path === 'models/llm/model.gguf')).toEqual({ path: 'models/llm/model.gguf', kind: 'hardlink', link: 'models/llm/hard.gguf' })
    expect(entries.find((e) => e.path === 'models/latest')).toMatchObject({ kind: 'symlink', target: 'llm/model.gguf' })
    expect(entries.find((e) => e.path === 'a')).toEqual({ path: 'a', kind: 'directory', mode: 0o755, uid: 0, gid: 0, mtimeMs: 7000 })
    expect(entries.some((e) => e.path === '')).toBe(false)
  })

  it('round-trips through JSON: same paths, kinds, metadata, link counts and data locations', () => {
    const original = sample()
    const entries = JSON.parse(JSON.stringify(original.toEntries())) as IndexEntry[]
    const restored = FileTree.fromEntries(entries, 7000)
    expect(restored.toEntries()).toEqual(original.toEntries())
    expect(restored.stats()).toEqual(original.stats())
    const a = original.lookup('models/llm/model.gguf') as FileNode
    const b = restored.lookup('models/llm/model.gguf') as FileNode
    expect(b).toMatchObject({ kind: 'file', size: a.size, layer: a.layer, offset: a.offset, mode: a.mode, uid: a.uid, nlink: 2 })
    expect(restored.lookup('models/llm/hard.gguf')).toBe(b)
    expect(restored.lookup('models')).toMatchObject({ mode: 0o750, uid: 1, gid: 2, mtimeMs: 2000 })
    expect(restored.root.mtimeMs).toBe(7000)
    // inode numbers are stable for a given index: loading it twice gives the same numbers
    const again = FileTree.fromEntries(entries, 7000)
    for (const { path, node } of restored.walk()) expect(again.lookup(path)!.ino, path).toBe(node.ino)
  })

  it('fromEntries can set the root\'s metadata', () => {
    const t = FileTree.fromEntries([], 0, { mode: 0o555, mtimeMs: 42 })
    expect(t.root).toMatchObject({ mode: 0o555, mtimeMs: 42, ino: 1 })
  })

  it('an empty tree has only the root', () => {
    const t = new FileTree()
    expect(t.toEntries()).toEqual([])
    expect(t.stats()).toEqual({ files: 0, directories: 1, symlinks: 0, bytes: 0 })
  })
})
