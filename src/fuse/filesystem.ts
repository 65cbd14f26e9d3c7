/**
 * The FUSE adapter: serves a model's FileTree read-only through fuse-native (libfuse 2, high-level API).
 *
 * fuse-native runs libfuse's multi-threaded loop on native threads; every operation is handed to the JS event
 * loop and the native thread blocks until the JS callback answers. So: every op must answer exactly once (else
 * a libfuse worker thread and the caller's syscall hang forever), and this process must never touch its own
 * mount with synchronous fs calls (the event loop that would answer them is the one blocked).
 */
import { constants as fsConstants, promises as fsp } from 'node:fs'
import { execFile } from 'node:child_process'
import { basename, dirname, join, resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import { promisify } from 'node:util'
import Fuse from 'fuse-native'
import type { DirectoryNode, FileNode, FileTree, TreeNode } from '../index/tree.js'
import type { FileContentReader, FileExtent, ReadHandle } from '../cache/types.js'
import { CnaifsError, errorMessage } from '../util/errors.js'
import { silentLogger, type Logger } from '../util/log.js'

const execFileAsync = promisify(execFile)

export interface LayerInfo { digest: string; mediaType: string; size: number }

export interface ModelFilesystemOptions {
  tree: FileTree
  layers: LayerInfo[] // manifest layers, indexed by FileNode.layer
  reader: FileContentReader
  uid?: number; gid?: number // override owner of every node (--uid/--gid); default: as in the tree
  allowOther?: boolean
  log?: Logger
  /** Called per operation for metrics: name, duration, errno (0 ok). Optional. */
  onOp?: (op: string, ms: number, errno: number) => void
}

/** The model never changes under a mount, so the kernel may cache names, attributes and misses for long. */
const CACHE_TIMEOUT_S = 3600
/** Largest single FUSE read; also reported as st_blksize so cp & co. use 128 KiB buffers. */
const MAX_READ = 131072
/** Best-effort post-mount tuning: deep readahead turns sequential model loads into few large reads. */
const READ_AHEAD_KB = 16384
const MAX_BACKGROUND = 64
const CONGESTION_THRESHOLD = 48
const FUSECTL_DIR = '/sys/fs/fuse/connections'

const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000
const ST_RDONLY = 1
const O_ACCMODE = fsConstants.O_WRONLY | fsConstants.O_RDWR
const W_OK = fsConstants.W_OK
/** Open flags that would modify the file: refused with EROFS even if the kernel let them through. */
const WRITE_OPEN_FLAGS = fsConstants.O_TRUNC | fsConstants.O_CREAT

export const XATTR_DIGEST = 'user.cnaifs.digest'
export const XATTR_MEDIATYPE = 'user.cnaifs.mediatype'
export const XATTR_CACHED = 'user.cnaifs.cached'
const FILE_XATTRS = [XATTR_DIGEST, XATTR_MEDIATYPE, XATTR_CACHED]

/** Identical error messages are logged at most once per this interval (a failing blob fails every read). */
const ERROR_LOG_INTERVAL_MS = 10_000

type Reply<R extends unknown[]> = (res: number, ...values: R) => void

/** `fusermount -uz`, or `umount -l` when fusermount is missing or refuses and we are root. */
async function lazyUnmount(mountpoint: string): Promise<void> {
  try {
    await execFileAsync('fusermount', ['-uz', mountpoint])
  } catch (err) {
    if (process.getuid?.() !== 0) throw err
    await execFileAsync('umount', ['-l', mountpoint])
  }
}

// fuse-native's Fuse.unmount (used by close() and by the `force` option) runs `fusermount -uz "<path>"`
// through a shell, so a mountpoint containing `$` or a backtick is expanded by the shell. Its callers look the
// static up at call time, so replacing it here fixes them; it is process-wide, and we are its only user.
if (process.platform === 'linux') {
  Fuse.unmount = (mnt, cb) => { lazyUnmount(mnt).then(() => cb(null), (err: Error) => cb(err)) }
}

/**
 * fuse-native 2.2.6 cannot express every mount option we need, and its xattr handlers trust the value to fit
 * the kernel's buffer; this subclass fixes both.
 */
class CnaifsFuse extends Fuse {
  private readonly extraOptions: string[]

  constructor(mnt: string, ops: Fuse.Operations, opts: Fuse.Options, extraOptions: string[]) {
    super(mnt, ops, opts)
    this.extraOptions = extraOptions
  }

  /** The base builds one '-oa,b,c' argument (or ''); we append the options it has no switch for. */
  protected override _fuseOptions(): string {
    const base = super._fuseOptions()
    const parts = base.startsWith('-o') ? base.slice(2).split(',').filter((p) => p !== '') : []
    parts.push(...this.extraOptions)
    return parts.length ? '-o' + parts.join(',') : ''
  }

  /**
   * The base copies the value into libfuse's buffer and answers value.length even when the value is longer
   * than the buffer, making libfuse reply with bytes past its allocation. A value can grow between the size
   * probe and the read (user.cnaifs.cached does), so answer ERANGE like a kernel filesystem: callers retry.
   */
  protected override _op_getxattr(signal: Fuse.Signal, path: string, name: string, valueBuf: Buffer, position: number): void {
    const getxattr = this.ops.getxattr
    if (!getxattr) { signal(Fuse.ENOSYS, valueBuf.buffer); return }
    getxattr(path, name, position, (err, value) => {
      if (err) return signal(err, valueBuf.buffer)
      if (!value) return signal(Fuse.ENODATA, valueBuf.buffer)
      if (valueBuf.length === 0) return signal(value.length, valueBuf.buffer) // size probe
      if (value.length > valueBuf.length) return signal(Fuse.ERANGE, valueBuf.buffer)
      value.copy(valueBuf)
      return signal(value.length, valueBuf.buffer)
    })
  }

  /** Same overflow as getxattr; also the base pads the size probe by 128 bytes for macOS, unneeded here. */
  protected override _op_listxattr(signal: Fuse.Signal, path: string, listBuf: Buffer): void {
    const listxattr = this.ops.listxattr
    if (!listxattr) { signal(Fuse.ENOSYS, listBuf.buffer); return }
    listxattr(path, (err, names) => {
      if (err || !names) return signal(err || Fuse.EIO, listBuf.buffer)
      const packed = Buffer.from(names.map((n) => n + '\0').join(''))
      if (listBuf.length === 0) return signal(packed.length, listBuf.buffer)
      if (packed.length > listBuf.length) return signal(Fuse.ERANGE, listBuf.buffer)
      packed.copy(listBuf)
      return signal(packed.length, listBuf.buffer)
    })
  }
}

interface OpenFile { handle: ReadHandle; path: string }

export class ModelFilesystem {
  readonly mountpoint: string
  private readonly tree: FileTree
  private readonly layers: LayerInfo[]
  private readonly reader: FileContentReader
  private readonly uid: number | undefined
  private readonly gid: number | undefined
  private readonly allowOther: boolean
  private readonly log: Logger
  private readonly onOp: ((op: string, ms: number, errno: number) => void) | undefined

  private fuse: CnaifsFuse | null = null
  private readonly files = new Map<number, OpenFile>()
  private nextFd = 0 // handles start at 1: 0 means "no handle" to fuse-native
  /** Start time (performance.now()) per in-flight read. */
  private readonly inFlight = new Map<number, number>()
  private nextReadId = 1
  private readonly errorLog = new Map<string, { until: number; suppressed: number }>()
  private statfsCache: Fuse.Statfs | null = null

  constructor(mountpoint: string, o: ModelFilesystemOptions) {
    this.mountpoint = resolve(mountpoint)
    this.tree = o.tree
    this.layers = o.layers
    this.reader = o.reader
    this.uid = o.uid
    this.gid = o.gid
    this.allowOther = o.allowOther ?? false
    this.log = (o.log ?? silentLogger()).child({ component: 'fuse', mountpoint: this.mountpoint })
    this.onOp = o.onOp
  }

  /**
   * Reads waiting on the reader right now, for a "hung I/O" gauge. `olderThan5s` (beyond the brief's
   * { count, oldestMs }) counts the ones waiting longer than 5 s; the daemon's metrics use it.
   */
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

  async mount(): Promise<void> {
    if (this.fuse) throw new CnaifsError('EMOUNT', `${this.mountpoint} is already mounted by this filesystem`)
    // fuse-native's own `force` only probes stat(mnt/test), which a cached negative entry can answer; ours asks
    // the daemon through statfs.
    if (await clearStaleMount(this.mountpoint)) this.log.warn('cleared a stale FUSE mount left by a dead daemon')

    const extra = [
      'ro',
      `negative_timeout=${CACHE_TIMEOUT_S}`,
      // Without use_ino libfuse replaces st_ino with its per-path node id: hard links would differ in ino.
      'use_ino',
      'readdir_ino',
    ]
    const fuse = new CnaifsFuse(this.mountpoint, this.operations(), {
      // fuse-native answers ETIMEDOUT on its own after 15 s by default; reads wait on the network and the
      // reader enforces its own deadline (answered as EIO), so fuse-native must never cut in first.
      timeout: false,
      force: true,
      mkdir: true,
      fsname: 'cnaifs',
      subtype: 'cnaifs',
      defaultPermissions: true,
      kernelCache: true, // content is immutable: keep the page cache across opens
      attrTimeout: CACHE_TIMEOUT_S,
      entryTimeout: CACHE_TIMEOUT_S,
      maxRead: MAX_READ,
      allowOther: this.allowOther,
    }, extra)

    try {
      await new Promise<void>((res, rej) => fuse.mount((err) => (err ? rej(err) : res())))
    } catch (err) {
      throw new CnaifsError('EMOUNT', `cannot mount at ${this.mountpoint}: ${errorMessage(err)}`, { cause: err })
    }
    this.fuse = fuse
    // fuse-native calls back when libfuse receives FUSE_INIT, before the reply reaches the kernel. A statfs
    // waits for the connection to be initialised; tuning before that would be undone by the INIT reply, which
    // caps readahead at libfuse's max_readahead.
    try {
      await fsp.statfs(this.mountpoint)
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, 'statfs on the new mount failed')
    }
    await tuneMount(this.mountpoint, this.log)
    this.log.debug({ options: fuse.opts, extra }, 'mounted')
  }

  async unmount(): Promise<void> {
    const fuse = this.fuse
    if (!fuse) return
    try {
      // A lazy unmount (fusermount -uz): open files stay readable until closed, and we keep serving them.
      await new Promise<void>((res, rej) => fuse.unmount((err) => (err ? rej(err) : res())))
    } catch (err) {
      if (await isMounted(this.mountpoint)) {
        throw new CnaifsError('EMOUNT', `cannot unmount ${this.mountpoint}: ${errorMessage(err)}`, { cause: err })
      }
      this.log.debug({ err: errorMessage(err) }, 'unmount: already gone')
    }
    this.fuse = null
    this.log.debug('unmounted')
  }

  // ---------------------------------------------------------------------------------------------------------
  // Operations

  private operations(): Fuse.Operations {
    const rofs = (op: string) => (...args: unknown[]) => {
      const cb = args[args.length - 1] as Fuse.Done
      this.run<[]>(op, cb, (reply) => reply(Fuse.EROFS))
    }
    const ok = (op: string) => (...args: unknown[]) => {
      const cb = args[args.length - 1] as Fuse.Done
      this.run<[]>(op, cb, (reply) => reply(0))
    }
    return {
      init: (cb) => this.run<[]>('init', cb, (reply) => reply(0)),

      getattr: (path, cb) => this.run<[Fuse.Stat?]>('getattr', cb, (reply) => {
        const node = this.find(path)
        if (!node) return reply(Fuse.ENOENT)
        reply(0, this.stat(node))
      }),
      // fuse-native 2.2.6 routes fgetattr to ops.getattr; this only makes libfuse register the op.
      fgetattr: (path, _fd, cb) => this.run<[Fuse.Stat?]>('fgetattr', cb, (reply) => {
        const node = this.find(path)
        if (!node) return reply(Fuse.ENOENT)
        reply(0, this.stat(node))
      }),

      access: (path, mode, cb) => this.run<[]>('access', cb, (reply) => {
        if (!this.find(path)) return reply(Fuse.ENOENT)
        reply(mode & W_OK ? Fuse.EROFS : 0)
      }),

      statfs: (_path, cb) => this.run<[Fuse.Statfs?]>('statfs', cb, (reply) => reply(0, this.statfs())),

      opendir: (path, _flags, cb) => this.run<[number?]>('opendir', cb, (reply) => {
        const node = this.find(path)
        if (!node) return reply(Fuse.ENOENT)
        if (node.kind !== 'directory') return reply(Fuse.ENOTDIR)
        reply(0, 0)
      }),
      releasedir: (_path, _fd, cb) => this.run<[]>('releasedir', cb, (reply) => reply(0)),

      readdir: (path, cb) => this.run<[string[]?, Fuse.Stat[]?]>('readdir', cb, (reply) => {
        const node = this.find(path)
        if (!node) return reply(Fuse.ENOENT)
        if (node.kind !== 'directory') return reply(Fuse.ENOTDIR)
        const parent = this.find(dirname(path)) ?? node
        // Stats carry d_ino (readdir_ino/use_ino); fuse-native ignores them unless there is one per name.
        const names = ['.', '..']
        const stats = [this.stat(node), this.stat(parent)]
        for (const [name, child] of node.children) {
          names.push(name)
          stats.push(this.stat(child))
        }
        reply(0, names, stats)
      }),

      readlink: (path, cb) => this.run<[string?]>('readlink', cb, (reply) => {
        const node = this.find(path)
        if (!node) return reply(Fuse.ENOENT)
        if (node.kind !== 'symlink') return reply(Fuse.EINVAL)
        reply(0, node.target)
      }),

      open: (path, flags, cb) => this.run<[number?]>('open', cb, (reply) => {
        const node = this.find(path)
        if (!node) return reply(Fuse.ENOENT)
        if ((flags & O_ACCMODE) !== fsConstants.O_RDONLY || (flags & WRITE_OPEN_FLAGS) !== 0) return reply(Fuse.EROFS)
        if (node.kind === 'directory') return reply(Fuse.EISDIR)
        if (node.kind !== 'file') return reply(Fuse.EINVAL)
        const extent = this.extent(node)
        if (!extent) return reply(Fuse.EIO)
        const fd = this.allocateFd()
        this.files.set(fd, { handle: this.reader.open(extent), path })
        reply(0, fd)
      }),

      release: (_path, fd, cb) => this.run<[]>('release', cb, (reply) => {
        const file = this.files.get(fd)
        if (file) {
          this.files.delete(fd)
          try {
            this.reader.release(file.handle)
          } catch (err) {
            this.logError('release', file.path, err)
          }
        }
        reply(0)
      }),

      read: (path, fd, buffer, length, position, cb) => this.run<[]>('read', cb, async (reply) => {
        const file = this.files.get(fd)
        if (!file) return reply(Fuse.EBADF)
        const size = file.handle.extent.size
        if (position >= size || length <= 0) return reply(0)
        const want = Math.min(length, size - position)
        const id = this.nextReadId++
        this.inFlight.set(id, performance.now())
        let data: Buffer
        try {
          data = await this.reader.read(file.handle, position, want)
        } catch (err) {
          // Deadlines (ETIMEDOUT), unreachable registries, corrupt blobs: all are EIO to the reading program.
          this.logError('read', path, err)
          return reply(Fuse.EIO)
        } finally {
          this.inFlight.delete(id)
        }
        // Copy and answer in one synchronous step: fuse-native detaches `buffer` once answered.
        const n = Math.min(data.length, want)
        data.copy(buffer, 0, 0, n)
        reply(n)
      }),

      getxattr: (path, name, _position, cb) => this.run<[Buffer?]>('getxattr', cb, (reply) => {
        const node = this.find(path)
        if (!node) return reply(Fuse.ENOENT)
        if (node.kind !== 'file') return reply(Fuse.ENODATA)
        const layer = this.layers[node.layer]
        if (!layer) return reply(Fuse.EIO)
        switch (name) {
          case XATTR_DIGEST: return reply(0, Buffer.from(layer.digest))
          case XATTR_MEDIATYPE: return reply(0, Buffer.from(layer.mediaType))
          case XATTR_CACHED: {
            const extent = this.extent(node)
            return extent ? reply(0, Buffer.from(String(this.reader.cachedBytes(extent)))) : reply(Fuse.EIO)
          }
          default: return reply(Fuse.ENODATA) // Linux ENOATTR
        }
      }),

      listxattr: (path, cb) => this.run<[string[]?]>('listxattr', cb, (reply) => {
        const node = this.find(path)
        if (!node) return reply(Fuse.ENOENT)
        reply(0, node.kind === 'file' ? FILE_XATTRS : [])
      }),

      // Nothing is ever dirty on a read-only filesystem.
      flush: ok('flush'),
      fsync: ok('fsync'),
      fsyncdir: ok('fsyncdir'),

      // Every modifying op: the `ro` mount makes the kernel refuse most of these before they get here.
      write: (_path, _fd, _buffer, _length, _position, cb) => this.run<[]>('write', cb, (reply) => reply(Fuse.EROFS)),
      create: rofs('create'),
      mknod: rofs('mknod'),
      mkdir: rofs('mkdir'),
      unlink: rofs('unlink'),
      rmdir: rofs('rmdir'),
      rename: rofs('rename'),
      link: rofs('link'),
      symlink: rofs('symlink'),
      truncate: rofs('truncate'),
      ftruncate: rofs('ftruncate'),
      chmod: rofs('chmod'),
      chown: rofs('chown'),
      utimens: rofs('utimens'),
      setxattr: rofs('setxattr'),
      removexattr: rofs('removexattr'),
    }
  }

  /**
   * Runs one op body with a once-only reply: a body that throws, rejects, or returns without replying still
   * answers (EIO), and a second reply is ignored. Also feeds the metrics hook.
   */
  private run<R extends unknown[]>(op: string, cb: Reply<R>, body: (reply: Reply<R>) => void | Promise<void>): void {
    const start = performance.now()
    let answered = false
    const reply: Reply<R> = (res, ...values) => {
      if (answered) return
      answered = true
      if (this.onOp) {
        try {
          this.onOp(op, performance.now() - start, res < 0 ? -res : 0)
        } catch { /* a metrics hook must not break the filesystem */ }
      }
      try {
        cb(res, ...values)
      } catch (err) {
        this.log.error({ op, err: errorMessage(err) }, 'fuse-native callback threw')
      }
    }
    // Error answers carry no value; fuse-native substitutes its defaults.
    const fail = (errno: number) => (reply as unknown as Reply<[]>)(errno)
    const unanswered = () => {
      if (answered) return
      this.log.error({ op }, 'operation finished without answering')
      fail(Fuse.EIO)
    }
    try {
      const p = body(reply)
      if (p) {
        p.then(unanswered, (err: unknown) => {
          this.logError(op, '', err)
          fail(Fuse.EIO)
        })
      } else {
        unanswered()
      }
    } catch (err) {
      this.logError(op, '', err)
      fail(Fuse.EIO)
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Helpers

  /** fuse-native gives absolute paths ('/a/b'); the tree wants them relative. */
  private find(path: string): TreeNode | undefined {
    return this.tree.lookup(path.replace(/^\/+/, ''))
  }

  private extent(node: FileNode): FileExtent | undefined {
    const layer = this.layers[node.layer]
    if (!layer) {
      this.log.error({ layer: node.layer, layers: this.layers.length }, 'file refers to a layer the manifest does not have')
      return undefined
    }
    return { blob: { digest: layer.digest, size: layer.size }, offset: node.offset, size: node.size }
  }

  private stat(node: TreeNode): Fuse.Stat {
    const time = Math.floor(node.mtimeMs)
    const owner = { uid: this.uid ?? node.uid, gid: this.gid ?? node.gid }
    const base = { ...owner, ino: node.ino, atime: time, mtime: time, ctime: time, blksize: MAX_READ }
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

  /** The tree never changes, so compute once. fuse-native packs every field as a uint32. */
  private statfs(): Fuse.Statfs {
    if (this.statfsCache) return this.statfsCache
    const { bytes, files, directories, symlinks } = this.tree.stats()
    let frsize = 4096
    while (Math.ceil(bytes / frsize) > 0xffffffff) frsize *= 2
    const blocks = Math.ceil(bytes / frsize)
    this.statfsCache = {
      bsize: MAX_READ, frsize, blocks, bfree: 0, bavail: 0,
      files: Math.min(files + directories + symlinks, 0xffffffff), ffree: 0, favail: 0,
      fsid: 0, flag: ST_RDONLY, namemax: 255,
    }
    return this.statfsCache
  }

  private allocateFd(): number {
    // uint32 handles, never 0; skip any still open after a wrap-around.
    do {
      this.nextFd = this.nextFd >= 0xffffffff ? 1 : this.nextFd + 1
    } while (this.files.has(this.nextFd))
    return this.nextFd
  }

  /** Warns once per distinct message per interval, counting the repeats it swallowed. */
  private logError(op: string, path: string, err: unknown): void {
    const message = errorMessage(err)
    const code = typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined
    const key = `${op}\0${path}\0${message}`
    const now = Date.now()
    const seen = this.errorLog.get(key)
    if (seen && seen.until > now) { seen.suppressed++; return }
    if (this.errorLog.size > 1000) {
      for (const [k, v] of this.errorLog) if (v.until <= now) this.errorLog.delete(k)
    }
    this.errorLog.set(key, { until: now + ERROR_LOG_INTERVAL_MS, suppressed: 0 })
    this.log.warn({ op, path: path || undefined, code, err: message, suppressed: seen?.suppressed || undefined }, `${op} failed`)
  }
}

function countSubdirectories(dir: DirectoryNode): number {
  let n = 0
  for (const child of dir.children.values()) if (child.kind === 'directory') n++
  return n
}

// -----------------------------------------------------------------------------------------------------------
// Mount table helpers

interface MountInfo {
  major: number
  minor: number
  mountPoint: string
  fsType: string
}

/** /proc/self/mountinfo escapes space, tab, newline and backslash as octal (\040 …). */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)))
}

async function readMountinfo(): Promise<MountInfo[]> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8')
  const mounts: MountInfo[] = []
  for (const line of text.split('\n')) {
    if (!line) continue
    // id parent major:minor root mountpoint options [optional fields…] - fstype source superoptions
    const fields = line.split(' ')
    const sep = fields.indexOf('-', 6)
    if (sep < 0 || fields.length < sep + 2) continue
    const [major, minor] = fields[2].split(':').map(Number)
    mounts.push({ major, minor, mountPoint: unescapeMountField(fields[4]), fsType: fields[sep + 1] })
  }
  return mounts
}

/**
 * The path as the mount table spells it. Only the parent is resolved: the mountpoint itself may be a dead
 * FUSE mount, where realpath fails with ENOTCONN.
 */
async function canonicalMountpoint(mountpoint: string): Promise<string> {
  const abs = resolve(mountpoint)
  if (abs === '/') return abs
  try {
    return join(await fsp.realpath(dirname(abs)), basename(abs))
  } catch {
    return abs
  }
}

/** The topmost mount at `mountpoint` (later lines of mountinfo are mounted over earlier ones). */
async function findMount(mountpoint: string): Promise<MountInfo | undefined> {
  const mp = await canonicalMountpoint(mountpoint)
  let found: MountInfo | undefined
  for (const m of await readMountinfo()) if (m.mountPoint === mp) found = m
  return found
}

export async function isMounted(mountpoint: string): Promise<boolean> {
  return (await findMount(mountpoint)) !== undefined
}

/**
 * Clears a FUSE mount whose daemon died ("Transport endpoint is not connected"). Only statfs is asked: the
 * kernel always forwards it to the daemon, whereas stat/lookup may be answered from caches of a dead mount.
 * Returns true if it unmounted something. A live mount (even a slow one) is left alone.
 */
export async function clearStaleMount(mountpoint: string): Promise<boolean> {
  const mp = await canonicalMountpoint(mountpoint)
  const mount = await findMount(mp)
  if (!mount || !mount.fsType.startsWith('fuse')) return false
  try {
    await fsp.statfs(mp)
    return false
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    // ECONNABORTED: the connection was aborted through fusectl rather than by the daemon exiting.
    if (code !== 'ENOTCONN' && code !== 'ECONNABORTED') return false
  }
  try {
    await lazyUnmount(mp)
  } catch (err) {
    throw new CnaifsError('EMOUNT', `cannot clear the stale mount at ${mp}: ${errorMessage(err)}`, { cause: err })
  }
  return true
}

// -----------------------------------------------------------------------------------------------------------
// Post-mount tuning

/**
 * Raises the mount's readahead and the connection's background-request limit (readahead requests are
 * background requests; the kernel default of 12 throttles parallel prefetch). Needs root; never fails.
 */
async function tuneMount(mountpoint: string, log: Logger): Promise<void> {
  let mount: MountInfo | undefined
  try {
    mount = await findMount(mountpoint)
  } catch (err) {
    log.debug({ err: errorMessage(err) }, 'tuning skipped: cannot read mountinfo')
    return
  }
  if (!mount) { log.debug('tuning skipped: mount not in mountinfo'); return }

  // The bdi of a (non-block) FUSE mount is named after the superblock's device number.
  await writeSysfs(`/sys/class/bdi/${mount.major}:${mount.minor}/read_ahead_kb`, READ_AHEAD_KB, log)

  // fusectl names connections by the kernel's dev_t: (major << 20) | minor.
  const connection = join(FUSECTL_DIR, String(mount.major * 2 ** 20 + mount.minor))
  if (!(await exists(connection)) && process.getuid?.() === 0) {
    try {
      const mounted = (await readMountinfo()).some((m) => m.fsType === 'fusectl' && m.mountPoint === FUSECTL_DIR)
      if (!mounted) await execFileAsync('mount', ['-t', 'fusectl', 'fusectl', FUSECTL_DIR])
    } catch (err) {
      log.debug({ err: errorMessage(err) }, 'cannot mount fusectl')
    }
  }
  if (await exists(connection)) {
    // max_background first: the kernel accepts any congestion_threshold, but it only makes sense below it.
    await writeSysfs(join(connection, 'max_background'), MAX_BACKGROUND, log)
    await writeSysfs(join(connection, 'congestion_threshold'), CONGESTION_THRESHOLD, log)
  } else {
    log.debug({ connection }, 'fusectl connection directory not available')
  }
}

async function writeSysfs(file: string, value: number, log: Logger): Promise<void> {
  try {
    await fsp.writeFile(file, `${value}\n`)
    log.debug({ file, value }, 'tuned')
  } catch (err) {
    log.debug({ file, value, err: errorMessage(err) }, 'cannot tune (not permitted?)')
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await fsp.access(path)
    return true
  } catch {
    return false
  }
}
