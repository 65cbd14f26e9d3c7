/**
 * The filesystem a mount serves: a model's FileTree, read-only, with file contents from the data path
 * (src/cache's FileDataPath). Written once against the binding contract (binding.ts), so the libfuse 3 addon
 * and the fuse-native fallback serve exactly the same thing.
 *
 * Besides the model's files, `.cnaifs/status` at the root holds a small JSON document (state, bytes cached,
 * blobs verified) that a readiness probe can read without host access. It is not listed in directory
 * listings (loaders and copies never pick it up) and is re-read at every open; a model that has its own
 * `.cnaifs` entry keeps it, and then has no status document.
 */
import { constants as fsConstants } from 'node:fs'
import { performance } from 'node:perf_hooks'
import type { DirectoryNode, FileNode, FileTree, TreeNode } from '../index/tree.js'
import type { FileDataPath, FileExtent, FileReadHandle } from '../cache/types.js'
import { errorCodeOf, errorMessage } from '../util/errors.js'
import { silentLogger, type Logger } from '../util/log.js'
import { FuseErrno, ROOT_INO, type FuseAttr, type FuseDirEntry, type FuseOpenReply, type FuseOps, type FuseStatfs, type ReadReply } from './binding.js'
import { errnoFor } from './errno.js'

const E = {
  ENOENT: 2, EIO: 5, EBADF: 9, EACCES: 13, ENOTDIR: 20, EISDIR: 21, EINVAL: 22, EROFS: 30, ENODATA: 61,
} as const

const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000
const W_OK = fsConstants.W_OK
/** Reported as st_blksize, so cp & co. read in big chunks. */
const BLKSIZE = 1024 * 1024

export const XATTR_DIGEST = 'user.cnaifs.digest'
export const XATTR_DIFFID = 'user.cnaifs.diffid'
export const XATTR_MEDIATYPE = 'user.cnaifs.mediatype'
export const XATTR_CACHED = 'user.cnaifs.cached'

export const STATUS_DIR = '.cnaifs'
export const STATUS_FILE = 'status'
/** The status document is padded to this size: its size must not change while the kernel caches it. */
export const STATUS_BYTES = 4096

/** Identical error messages are logged at most once per this interval (a failing blob fails every read). */
const ERROR_LOG_INTERVAL_MS = 10_000

/** One manifest layer, as the files of the tree refer to it by index. */
export interface LayerInfo {
  digest: string
  mediaType: string
  size: number
  /** For a compressed layer: the uncompressed content its files' offsets refer to (digest = diffId). */
  content?: { digest: string; size: number }
}

export interface ModelFilesystemOptions {
  tree: FileTree
  layers: LayerInfo[]
  data: FileDataPath
  /** Show every node as owned by this uid/gid (--uid/--gid); default: as in the tree. */
  uid?: number
  gid?: number
  /** The readiness document's content (any JSON); omitted: no `.cnaifs/status`. */
  status?: () => object
  log?: Logger
  /** Called per operation for metrics: name, duration, errno (0 ok). */
  onOp?: (op: string, ms: number, errno: number) => void
}

interface OpenFile { handle: FileReadHandle; path: string }

export class ModelFilesystem implements FuseOps {
  private readonly tree: FileTree
  private readonly layers: LayerInfo[]
  private readonly data: FileDataPath
  private readonly log: Logger
  private readonly byIno = new Map<number, TreeNode>()
  private readonly parentOf = new Map<number, number>()
  private readonly pathOf = new Map<number, string>()
  private readonly files = new Map<number, OpenFile>()
  private readonly statusSnapshots = new Map<number, Buffer>()
  private readonly inFlight = new Map<number, number>()
  private readonly errorLog = new Map<string, { until: number; suppressed: number }>()
  private readonly statusDirIno: number
  private readonly statusFileIno: number
  private readonly hasStatus: boolean
  private nextFh = 0
  private nextReadId = 1
  private statfsCache?: FuseStatfs

  constructor(private readonly o: ModelFilesystemOptions) {
    this.tree = o.tree
    this.layers = o.layers
    this.data = o.data
    this.log = (o.log ?? silentLogger()).child({ component: 'fuse' })
    let maxIno = ROOT_INO
    for (const { path, node } of this.tree.walk()) {
      this.byIno.set(node.ino, node)
      if (!this.pathOf.has(node.ino)) this.pathOf.set(node.ino, path)
      maxIno = Math.max(maxIno, node.ino)
      if (node.kind === 'directory') for (const child of node.children.values()) if (child.kind === 'directory') this.parentOf.set(child.ino, node.ino)
    }
    this.parentOf.set(ROOT_INO, ROOT_INO)
    this.statusDirIno = maxIno + 1
    this.statusFileIno = maxIno + 2
    this.hasStatus = o.status !== undefined && !this.tree.root.children.has(STATUS_DIR)
    if (o.status && !this.hasStatus) this.log.warn(`the model has its own ${STATUS_DIR} entry: no status document in this mount`)
  }

  /** Reads waiting on the data path right now, for the "hung I/O" gauge. */
  inFlightReads(): { count: number; oldestMs: number; olderThan5s: number } {
    const now = performance.now()
    let oldest = now
    let olderThan5s = 0
    for (const start of this.inFlight.values()) {
      if (start < oldest) oldest = start
      if (now - start > 5000) olderThan5s++
    }
    return { count: this.inFlight.size, oldestMs: now - oldest, olderThan5s }
  }

  // ---------------------------------------------------------------------------------------------------------
  // FuseOps

  lookup(parent: number, name: string): FuseAttr {
    return this.op('lookup', () => {
      if (this.hasStatus && parent === ROOT_INO && name === STATUS_DIR) return this.statusDirAttr()
      if (this.hasStatus && parent === this.statusDirIno) {
        if (name === STATUS_FILE) return this.statusFileAttr()
        throw new FuseErrno(E.ENOENT)
      }
      const dir = this.node(parent)
      if (dir.kind !== 'directory') throw new FuseErrno(E.ENOTDIR)
      const child = dir.children.get(name)
      if (!child) throw new FuseErrno(E.ENOENT)
      return this.attr(child)
    })
  }

  getattr(ino: number): FuseAttr {
    return this.op('getattr', () => {
      if (this.hasStatus && ino === this.statusDirIno) return this.statusDirAttr()
      if (this.hasStatus && ino === this.statusFileIno) return this.statusFileAttr()
      return this.attr(this.node(ino))
    })
  }

  readlink(ino: number): string {
    return this.op('readlink', () => {
      const node = this.node(ino)
      if (node.kind !== 'symlink') throw new FuseErrno(E.EINVAL)
      return node.target
    })
  }

  open(ino: number, flags: number): number | FuseOpenReply {
    return this.op('open', () => {
      if ((flags & (fsConstants.O_WRONLY | fsConstants.O_RDWR)) !== 0 || (flags & (fsConstants.O_TRUNC | fsConstants.O_CREAT)) !== 0) {
        throw new FuseErrno(E.EROFS)
      }
      if (this.hasStatus && ino === this.statusFileIno) {
        const fh = this.allocateFh()
        this.statusSnapshots.set(fh, this.statusBytes())
        return { fh, keepCache: false, directIo: true }
      }
      const node = this.node(ino)
      if (node.kind === 'directory') throw new FuseErrno(E.EISDIR)
      if (node.kind !== 'file') throw new FuseErrno(E.EINVAL)
      const handle = this.data.open(this.extent(node))
      const fh = this.allocateFh()
      this.files.set(fh, { handle, path: this.pathOf.get(ino) ?? '' })
      return fh
    })
  }

  read(ino: number, fh: number, offset: number, length: number): ReadReply | Promise<ReadReply> {
    const snapshot = this.statusSnapshots.get(fh)
    if (snapshot) return snapshot.subarray(Math.min(offset, snapshot.length), Math.min(offset + length, snapshot.length))
    const file = this.files.get(fh)
    if (!file) throw new FuseErrno(E.EBADF)
    const start = performance.now()
    let result: ReadReply | Promise<ReadReply>
    try {
      result = this.data.read(file.handle, offset, length)
    } catch (err) {
      throw this.failed('read', file.path, err, start)
    }
    if (!(result instanceof Promise)) {
      this.o.onOp?.('read', performance.now() - start, 0)
      return result
    }
    const id = this.nextReadId++
    this.inFlight.set(id, start)
    return result.then(
      (r) => { this.inFlight.delete(id); this.o.onOp?.('read', performance.now() - start, 0); return r },
      (err: unknown) => { this.inFlight.delete(id); throw this.failed('read', file.path, err, start) },
    )
  }

  release(_ino: number, fh: number): void {
    if (this.statusSnapshots.delete(fh)) return
    const file = this.files.get(fh)
    if (!file) return
    this.files.delete(fh)
    try {
      this.data.release(file.handle)
    } catch (err) {
      this.logError('release', file.path, err)
    }
  }

  opendir(ino: number): number {
    return this.op('opendir', () => {
      if (this.hasStatus && ino === this.statusDirIno) return 0
      if (this.node(ino).kind !== 'directory') throw new FuseErrno(E.ENOTDIR)
      return 0
    })
  }

  readdir(ino: number): FuseDirEntry[] {
    return this.op('readdir', () => {
      if (this.hasStatus && ino === this.statusDirIno) {
        return [
          { name: '.', attr: this.statusDirAttr() },
          { name: '..', attr: this.attr(this.tree.root) },
          { name: STATUS_FILE, attr: this.statusFileAttr() },
        ]
      }
      const dir = this.node(ino)
      if (dir.kind !== 'directory') throw new FuseErrno(E.ENOTDIR)
      const parent = this.byIno.get(this.parentOf.get(ino) ?? ROOT_INO) ?? dir
      const entries: FuseDirEntry[] = [{ name: '.', attr: this.attr(dir) }, { name: '..', attr: this.attr(parent) }]
      for (const [name, child] of dir.children) entries.push({ name, attr: this.attr(child) })
      return entries
    })
  }

  releasedir(): void {}

  getxattr(ino: number, name: string): Buffer {
    return this.op('getxattr', () => {
      const node = this.xattrNode(ino)
      if (!node) throw new FuseErrno(E.ENODATA)
      const layer = this.layer(node)
      switch (name) {
        case XATTR_DIGEST: return Buffer.from(layer.digest)
        case XATTR_MEDIATYPE: return Buffer.from(layer.mediaType)
        case XATTR_CACHED: return Buffer.from(String(this.data.cachedBytes(this.extent(node))))
        case XATTR_DIFFID: if (layer.content) return Buffer.from(layer.content.digest); break
      }
      throw new FuseErrno(E.ENODATA)
    })
  }

  listxattr(ino: number): string[] {
    return this.op('listxattr', () => {
      const node = this.xattrNode(ino)
      if (!node) return []
      const names = [XATTR_DIGEST, XATTR_MEDIATYPE, XATTR_CACHED]
      if (this.layer(node).content) names.push(XATTR_DIFFID)
      return names
    })
  }

  statfs(): FuseStatfs {
    if (this.statfsCache) return this.statfsCache
    const { bytes, files, directories, symlinks } = this.tree.stats()
    const frsize = 4096
    this.statfsCache = {
      bsize: BLKSIZE, frsize, blocks: Math.ceil(bytes / frsize), bfree: 0, bavail: 0,
      files: files + directories + symlinks, ffree: 0, favail: 0, namemax: 255,
    }
    return this.statfsCache
  }

  access(ino: number, mask: number): void {
    this.op('access', () => {
      if (!(this.hasStatus && (ino === this.statusDirIno || ino === this.statusFileIno))) this.node(ino)
      if (mask & W_OK) throw new FuseErrno(E.EROFS)
    })
  }

  // ---------------------------------------------------------------------------------------------------------

  /** Runs a synchronous op body for the metrics hook; FuseErrno passes, anything else is logged and EIO. */
  private op<T>(name: string, body: () => T): T {
    const start = performance.now()
    try {
      const value = body()
      this.o.onOp?.(name, performance.now() - start, 0)
      return value
    } catch (err) {
      if (err instanceof FuseErrno) {
        this.o.onOp?.(name, performance.now() - start, err.errno)
        throw err
      }
      throw this.failed(name, '', err, start)
    }
  }

  /** The FuseErrno an error becomes, logged (rate-limited) and counted. */
  private failed(op: string, path: string, err: unknown, start: number): FuseErrno {
    const errno = err instanceof FuseErrno ? err.errno : errnoFor(err)
    if (!(err instanceof FuseErrno)) this.logError(op, path, err)
    this.o.onOp?.(op, performance.now() - start, errno)
    return new FuseErrno(errno, errorMessage(err))
  }

  private node(ino: number): TreeNode {
    const node = this.byIno.get(ino)
    if (!node) throw new FuseErrno(E.ENOENT)
    return node
  }

  /** The file node xattrs describe (directories, symlinks and the status document have none). */
  private xattrNode(ino: number): FileNode | undefined {
    if (this.hasStatus && (ino === this.statusDirIno || ino === this.statusFileIno)) return undefined
    const node = this.node(ino)
    return node.kind === 'file' ? node : undefined
  }

  private layer(node: FileNode): LayerInfo {
    const layer = this.layers[node.layer]
    if (!layer) {
      this.log.error({ layer: node.layer, layers: this.layers.length }, 'file refers to a layer the manifest does not have')
      throw new FuseErrno(E.EIO)
    }
    return layer
  }

  private extent(node: FileNode): FileExtent {
    const layer = this.layer(node)
    return { blob: layer.content ?? { digest: layer.digest, size: layer.size }, offset: node.offset, size: node.size }
  }

  private attr(node: TreeNode): FuseAttr {
    const time = node.mtimeMs
    const base = {
      ino: node.ino, uid: this.o.uid ?? node.uid, gid: this.o.gid ?? node.gid,
      atimeMs: time, mtimeMs: time, ctimeMs: time, blksize: BLKSIZE,
    }
    switch (node.kind) {
      case 'directory':
        return { ...base, mode: S_IFDIR | (node.mode & 0o7777), size: 4096, nlink: 2 + countSubdirectories(node), blocks: 8 }
      case 'file':
        return { ...base, mode: S_IFREG | (node.mode & 0o7777), size: node.size, nlink: node.nlink, blocks: Math.ceil(node.size / 512) }
      case 'symlink': {
        const size = Buffer.byteLength(node.target)
        return { ...base, mode: S_IFLNK | (node.mode & 0o7777), size, nlink: 1, blocks: Math.ceil(size / 512) }
      }
    }
  }

  private statusDirAttr(): FuseAttr {
    const root = this.attr(this.tree.root)
    return { ...root, ino: this.statusDirIno, mode: S_IFDIR | 0o555, nlink: 2, uid: root.uid, gid: root.gid }
  }

  private statusFileAttr(): FuseAttr {
    const root = this.attr(this.tree.root)
    const now = Date.now()
    return {
      ...root, ino: this.statusFileIno, mode: S_IFREG | 0o444, nlink: 1, size: STATUS_BYTES, blocks: STATUS_BYTES / 512,
      atimeMs: now, mtimeMs: now, ctimeMs: now, cacheTimeoutS: 0,
    }
  }

  /** The status document: JSON padded with spaces to STATUS_BYTES (valid JSON still), ending in a newline. */
  private statusBytes(): Buffer {
    let text: string
    try {
      text = JSON.stringify(this.o.status?.() ?? {})
    } catch (err) {
      text = JSON.stringify({ state: 'error', error: errorMessage(err) })
    }
    const out = Buffer.alloc(STATUS_BYTES, ' ')
    const body = Buffer.from(text)
    if (body.length >= STATUS_BYTES) {
      Buffer.from(JSON.stringify({ state: 'error', error: 'status document too large' })).copy(out)
    } else {
      body.copy(out)
    }
    out[STATUS_BYTES - 1] = 0x0a
    return out
  }

  private allocateFh(): number {
    // Handles are uint32 on fuse-native and never 0; skip any still open after a wrap-around.
    do {
      this.nextFh = this.nextFh >= 0xffffffff ? 1 : this.nextFh + 1
    } while (this.files.has(this.nextFh) || this.statusSnapshots.has(this.nextFh))
    return this.nextFh
  }

  /** Warns once per distinct message per interval, counting the repeats it swallowed. */
  private logError(op: string, path: string, err: unknown): void {
    const message = errorMessage(err)
    const key = `${op}\0${path}\0${message}`
    const now = Date.now()
    const seen = this.errorLog.get(key)
    if (seen && seen.until > now) { seen.suppressed++; return }
    if (this.errorLog.size > 1000) {
      for (const [k, v] of this.errorLog) if (v.until <= now) this.errorLog.delete(k)
    }
    this.errorLog.set(key, { until: now + ERROR_LOG_INTERVAL_MS, suppressed: 0 })
    this.log.warn({ op, path: path || undefined, code: errorCodeOf(err), err: message, suppressed: seen?.suppressed || undefined }, `${op} failed`)
  }
}

function countSubdirectories(dir: DirectoryNode): number {
  let n = 0
  for (const child of dir.children.values()) if (child.kind === 'directory') n++
  return n
}

export { E as ERRNO }
