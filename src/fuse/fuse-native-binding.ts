/**
 * FuseBinding over fuse-native 2.2.6 (libfuse 2, high-level path API): the fallback when our fuse3 addon is
 * not built.
 *
 * fuse-native runs libfuse 2's multi-threaded loop on native threads; every operation is handed to the JS
 * event loop and its native thread blocks until the callback answers (libfuse 2 starts another thread
 * whenever all are busy, so waiting reads cost a thread each). Requests carry paths: each is translated to
 * an inode by looking its components up from ROOT_INO, and the path → inode map is an LRU whose eviction
 * forgets the lookup it holds, so FuseOps sees every lookup balanced by a forget as with libfuse 3.
 *
 * The fuse-native quirks carried over from the first adapter: its own 15 s timeout is disabled, xattr
 * values that outgrow the kernel's buffer answer ERANGE, Fuse.unmount is replaced (it ran a shell), inode
 * numbers pass through (use_ino, readdir_ino), misses are cached (negative_timeout), statfs fields are
 * packed as uint32, fgetattr is routed to getattr, the connection is tuned through sysfs and fusectl, and a
 * stale mount left by a killed daemon is cleared before mounting.
 */
import { constants as fsConstants, promises as fsp, read as fsRead } from 'node:fs'
import { createRequire } from 'node:module'
import { constants as osConstants } from 'node:os'
import { basename, dirname } from 'node:path'
import { promisify } from 'node:util'
import Fuse from 'fuse-native'
import { LRUCache } from 'lru-cache'
import {
  FuseErrno, ROOT_INO, isFileRange,
  type FuseAttr, type FuseBinding, type FuseDirEntry, type FuseMountOptions, type FuseOps, type FuseSession,
  type FuseStatfs,
} from './binding.js'
import {
  clearStaleMount, deviceMounted, escapeMountOption, findMount, detachThenEnd, isOurMount, lazyUnmount, prepareMountpoint, tuneMount, type MountDevice,
} from './mount-table.js'
import { CnaifsError, errorMessage } from '../util/errors.js'

const E = osConstants.errno

/** libfuse 2 never sends more than 32 pages per request. */
const MAX_READ = 128 * 1024
/** How often the mount table is checked for the mount going away (fuse-native reports no such event). */
const ENDED_POLL_MS = 1000
/** Paths whose inode is remembered; each entry holds one lookup of FuseOps, forgotten on eviction. */
const PATH_CACHE_ENTRIES = 65_536
const O_ACCMODE = fsConstants.O_WRONLY | fsConstants.O_RDWR
/** Open flags that would modify the file: refused with EROFS even if the kernel let them through. */
const WRITE_OPEN_FLAGS = fsConstants.O_TRUNC | fsConstants.O_CREAT
const UINT32_MAX = 0xffffffff
const readAt = promisify(fsRead)

// fuse-native's Fuse.unmount runs `fusermount -uz "<path>"` through a shell, so a mountpoint containing `$`
// or a backtick is expanded by the shell. Its callers look the static up at call time, so replacing it fixes
// them; it is process-wide, and cnaifs is its only user.
if (process.platform === 'linux') {
  Fuse.unmount = (mnt, cb) => { lazyUnmount(mnt).then(() => cb(null), (err: Error) => cb(err)) }
}

/** fuse-native's own native module (index.js keeps it private): its unmount only lets the event loop go. */
interface FuseNativeAddon {
  fuse_native_unmount(mnt: string, thread: Buffer): void
}
let addon: FuseNativeAddon | undefined
function fuseNativeAddon(): FuseNativeAddon {
  if (!addon) {
    const require = createRequire(import.meta.url)
    const index = require.resolve('fuse-native')
    const nodeGypBuild = createRequire(index)('node-gyp-build') as (dir: string) => FuseNativeAddon
    addon = nodeGypBuild(dirname(index))
  }
  return addon
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
   * probe and the read, so answer ERANGE like a kernel filesystem: callers retry.
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

export class FuseNativeBinding implements FuseBinding {
  readonly name = 'fuse-native' as const

  async mount(mountpoint: string, ops: FuseOps, options: FuseMountOptions): Promise<FuseSession> {
    const prepared = await prepareMountpoint(mountpoint)
    const session = new FuseNativeSession(prepared.mountpoint, ops, options)
    await session.start()
    return session
  }
}

/** A request fuse-native waits on. `filling`: a read is being copied into libfuse's buffer right now. */
interface Pending {
  answer: (res: number, ...values: unknown[]) => void
  /** Answered (by the filesystem, or with EIO when the session ended): libfuse's buffer is gone. */
  answered: boolean
  filling: boolean
  /** The session ended while filling: answer EIO once the copy is done (the buffer is libfuse's). */
  endedWhileFilling: boolean
}

interface OpenNode { ino: number; fh: number; path: string }

type Reply<R extends unknown[]> = (res: number, ...values: R) => void

function toStat(a: FuseAttr): Fuse.Stat {
  return {
    ino: a.ino, mode: a.mode, nlink: a.nlink, uid: a.uid, gid: a.gid, size: a.size, blocks: a.blocks, blksize: a.blksize,
    atime: a.atimeMs, mtime: a.mtimeMs, ctime: a.ctimeMs,
  }
}

/** fuse-native packs every statfs field as a uint32: scale the block size up until the counts fit. */
export function packStatfs(s: FuseStatfs): Fuse.Statfs {
  let { frsize, blocks, bfree, bavail } = s
  frsize = frsize || s.bsize || 4096
  while (Math.max(blocks, bfree, bavail) > UINT32_MAX) {
    frsize *= 2
    blocks = Math.ceil(blocks / 2)
    bfree = Math.floor(bfree / 2)
    bavail = Math.floor(bavail / 2)
  }
  const clamp = (n: number) => Math.min(Math.max(0, n), UINT32_MAX)
  return {
    bsize: clamp(s.bsize), frsize: clamp(frsize), blocks, bfree, bavail,
    files: clamp(s.files), ffree: clamp(s.ffree), favail: clamp(s.favail),
    fsid: 0, flag: 1 /* ST_RDONLY */, namemax: clamp(s.namemax),
  }
}

class FuseNativeSession implements FuseSession {
  readonly binding = 'fuse-native' as const
  readonly maxRead = MAX_READ
  readonly ended: Promise<void>

  private fuse: CnaifsFuse | undefined
  private dev: MountDevice | undefined
  private isEnded = false
  private resolveEnded!: () => void
  private poller: NodeJS.Timeout | undefined
  private probing = false
  private lastStatfs: Fuse.Statfs | undefined
  private unmounting: Promise<void> | undefined
  private readonly pending = new Set<Pending>()
  private readonly files = new Map<number, OpenNode>()
  private readonly dirs = new Map<number, OpenNode>()
  private nextHandle = 0
  private readonly paths: LRUCache<string, number>
  private readonly resolving = new Map<string, Promise<number>>()

  /** The filesystem's operations, refusing with EIO once the session ended (a path walk may be half done). */
  private readonly ops: FuseOps

  constructor(readonly mountpoint: string, ops: FuseOps, private readonly options: FuseMountOptions) {
    this.ended = new Promise<void>((res) => { this.resolveEnded = res })
    const live = <A extends unknown[], R>(f: (...args: A) => R) => (...args: A): R => {
      if (this.isEnded) throw new FuseErrno(E.EIO, 'the FUSE session has ended')
      return f.apply(ops, args)
    }
    this.ops = {
      lookup: live(ops.lookup), getattr: live(ops.getattr), readlink: live(ops.readlink), open: live(ops.open),
      read: live(ops.read), release: live(ops.release), opendir: live(ops.opendir), readdir: live(ops.readdir),
      releasedir: live(ops.releasedir), getxattr: live(ops.getxattr), listxattr: live(ops.listxattr),
      statfs: live(ops.statfs), access: live(ops.access),
      forget: ops.forget ? (ino, n) => { if (!this.isEnded) ops.forget!.call(ops, ino, n) } : undefined,
    }
    this.paths = new LRUCache<string, number>({
      max: PATH_CACHE_ENTRIES,
      // Each cached path holds one lookup; dropping it is that lookup's forget (not at the end of the
      // session: the kernel forgets everything at unmount without telling, and so do we).
      dispose: (ino) => { if (!this.isEnded) this.forget(ino, 1) },
    })
  }

  async start(): Promise<void> {
    const o = this.options
    const extra = [
      'ro', 'nosuid', 'nodev',
      `attr_timeout=${o.attrTimeoutS}`,
      `entry_timeout=${o.entryTimeoutS}`,
      `negative_timeout=${o.negativeTimeoutS}`,
      // Without use_ino libfuse replaces st_ino with its per-path node id: hard links would differ in ino.
      'use_ino',
      'readdir_ino',
      // Keep the page cache across opens while a file's size and mtime are unchanged (always, for model files;
      // never, for the status document, whose mtime is its time of reading). libfuse 2 cannot say so per open
      // (kernel_cache would keep every file's cache); ac_attr_timeout=0 makes it look at the attributes each open.
      'auto_cache',
      'ac_attr_timeout=0',
    ]
    const fuse = new CnaifsFuse(this.mountpoint, this.operations(), {
      // fuse-native answers ETIMEDOUT on its own after 15 s by default; reads wait on the network and the
      // filesystem enforces its own deadline, so fuse-native must never cut in first.
      timeout: false,
      force: false, // prepareMountpoint cleared a stale mount already, asking statfs instead of a cached stat
      mkdir: false,
      fsname: escapeMountOption(o.fsname),
      subtype: escapeMountOption(o.subtype),
      defaultPermissions: true,
      maxRead: MAX_READ,
      allowOther: o.allowOther,
    }, extra)
    try {
      await new Promise<void>((res, rej) => fuse.mount((err) => (err ? rej(err) : res())))
    } catch (err) {
      throw new CnaifsError('EMOUNT', `cannot mount at ${this.mountpoint}: ${errorMessage(err)}`, { cause: err })
    }
    this.fuse = fuse
    try {
      // fuse-native calls back when libfuse receives FUSE_INIT, before the reply reaches the kernel. A statfs
      // waits for the connection to be initialised; tuning before that would be undone by the INIT reply.
      await fsp.statfs(this.mountpoint)
      const m = await findMount(this.mountpoint)
      if (!m) throw new Error('the mount is not in the mount table')
      this.dev = { major: m.major, minor: m.minor }
    } catch (err) {
      await this.unmount().catch(() => {})
      throw new CnaifsError('EMOUNT', `cannot mount at ${this.mountpoint}: ${errorMessage(err)}`, { cause: err })
    }
    await tuneMount(this.dev, { readaheadBytes: o.readaheadBytes, maxBackground: o.maxBackground, congestionThreshold: o.congestionThreshold })
    this.poller = setInterval(() => { void this.checkMounted() }, ENDED_POLL_MS)
    this.poller.unref()
  }

  pendingRequests(): number {
    return this.pending.size
  }

  unmount(): Promise<void> {
    if (this.isEnded) return this.ended
    this.unmounting ??= detachThenEnd(this.mountpoint, this.dev, () => this.end(), this.ended)
    return this.unmounting
  }

  /**
   * fuse-native tells nobody when the session is over. Gone from the mount table: unmounted (from outside
   * too). Still there but statfs fails with ENOTCONN/ECONNABORTED: the connection was aborted (fusectl) and
   * libfuse's loop has ended. The probe's statfs is answered from the last answer of the filesystem, so the
   * poll adds no work there.
   */
  private async checkMounted(): Promise<void> {
    if (this.isEnded || !this.dev || this.probing) return
    this.probing = true
    try {
      if (!(await deviceMounted(this.dev))) { this.end(); return }
      await fsp.statfs(this.mountpoint)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOTCONN' || code === 'ECONNABORTED') this.end()
      // anything else (a /proc hiccup, a mount over ours): ask again next time
    } finally {
      this.probing = false
    }
  }

  /**
   * The session is over: answer everything still waiting with EIO (a read being copied into libfuse's buffer
   * is answered as soon as the copy is done), answer anything later with EIO, and let fuse-native's native
   * handle go so the process can exit. libfuse 2's own thread ends when the kernel drops the connection.
   */
  private end(): void {
    if (this.isEnded) return
    this.isEnded = true
    if (this.poller) clearInterval(this.poller)
    for (const p of [...this.pending]) {
      if (p.filling) p.endedWhileFilling = true
      else p.answer(-E.EIO)
    }
    this.files.clear()
    this.dirs.clear()
    this.paths.clear()
    this.resolving.clear()
    const fuse = this.fuse as (CnaifsFuse & { _thread?: Buffer }) | undefined
    if (fuse?._thread) {
      try {
        fuseNativeAddon().fuse_native_unmount(this.mountpoint, fuse._thread)
      } catch (err) {
        this.unexpected('unmount', err)
      }
    }
    void this.clearIfDead().finally(() => this.resolveEnded())
  }

  /** An aborted connection leaves a dead mount behind: clear it if it is ours. */
  private async clearIfDead(): Promise<void> {
    try {
      if (this.dev && await isOurMount(this.mountpoint, this.dev)) await clearStaleMount(this.mountpoint)
    } catch {
      // A later mount at this path clears it; ended must resolve regardless.
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Requests

  /**
   * Runs one request with a once-only answer: the body's thrown or rejected FuseErrno is its errno, anything
   * else EIO (reported); a body that finishes without answering answers EIO; after the session ended every
   * request is answered EIO at once.
   */
  private request<R extends unknown[]>(op: string, cb: Reply<R>, body: (reply: Reply<R>, p: Pending) => void | Promise<void>): void {
    if (this.isEnded) { (cb as unknown as Reply<[]>)(-E.EIO); return }
    const p: Pending = {
      answered: false,
      filling: false,
      endedWhileFilling: false,
      answer: (res, ...values) => {
        if (p.answered) return
        p.answered = true
        this.pending.delete(p)
        try {
          (cb as (res: number, ...v: unknown[]) => void)(res, ...values)
        } catch (err) {
          this.unexpected(op, err)
        }
      },
    }
    this.pending.add(p)
    const reply = p.answer as Reply<R>
    const fail = (err: unknown) => p.answer(this.errnoOf(op, err))
    try {
      const result = body(reply, p)
      if (result) result.then(() => { if (!p.answered) p.answer(-E.EIO) }, fail)
      else if (!p.answered) p.answer(-E.EIO)
    } catch (err) {
      fail(err)
    }
  }

  private errnoOf(op: string, err: unknown): number {
    if (err instanceof FuseErrno && err.errno > 0) return -err.errno
    this.unexpected(op, err)
    return -E.EIO
  }

  private unexpected(op: string, err: unknown): void {
    try {
      this.options.onUnexpected?.(op, err)
    } catch { /* a reporting hook must not break the answer */ }
  }

  private forget(ino: number, nlookup: number): void {
    try {
      this.ops.forget?.(ino, nlookup)
    } catch (err) {
      this.unexpected('forget', err)
    }
  }

  /** The inode at an absolute path, looking up each component not cached yet (concurrent walks share lookups). */
  private resolve(path: string): Promise<number> {
    if (path === '/' || path === '') return Promise.resolve(ROOT_INO)
    const cached = this.paths.get(path)
    if (cached !== undefined) return Promise.resolve(cached)
    let walk = this.resolving.get(path)
    if (!walk) {
      walk = (async () => {
        const parent = await this.resolve(dirname(path))
        const attr = await this.ops.lookup(parent, basename(path))
        if (!this.isEnded) this.paths.set(path, attr.ino)
        return attr.ino
      })()
      const settled = walk
      walk.then(() => this.resolving.delete(path), () => this.resolving.delete(path))
      this.resolving.set(path, settled)
    }
    return walk
  }

  private allocateHandle(): number {
    // uint32 handles (fuse-native passes fh as one), never 0; skip any still open after a wrap-around.
    do {
      this.nextHandle = this.nextHandle >= UINT32_MAX ? 1 : this.nextHandle + 1
    } while (this.files.has(this.nextHandle) || this.dirs.has(this.nextHandle))
    return this.nextHandle
  }

  private async listing(path: string, ino: number): Promise<FuseDirEntry[]> {
    // fuse-native's readdir carries no handle: use any handle open on this path, else a short-lived one.
    for (const d of this.dirs.values()) if (d.path === path) return this.ops.readdir(d.ino, d.fh)
    const fh = await this.ops.opendir(ino)
    try {
      return await this.ops.readdir(ino, fh)
    } finally {
      await this.ops.releasedir(ino, fh)
    }
  }

  private async read(p: Pending, file: OpenNode, buffer: Buffer, length: number, position: number): Promise<void> {
    const r = await this.ops.read(file.ino, file.fh, position, length)
    if (p.answered) return // the session ended meanwhile; the buffer is no longer ours to write
    if (!isFileRange(r)) {
      // Copy and answer in one synchronous step: fuse-native detaches `buffer` once answered.
      const n = Math.min(r.length, length)
      r.copy(buffer, 0, 0, n)
      p.answer(n)
      return
    }
    // Read the range straight into libfuse's buffer on the libuv pool; the buffer stays libfuse's until we
    // answer, so nothing may answer while the copy runs (end() defers to us through endedWhileFilling).
    const want = Math.min(r.length, length)
    let done = 0
    p.filling = true
    try {
      while (done < want) {
        const { bytesRead } = await readAt(r.fd, buffer, done, want - done, r.position + done)
        if (bytesRead === 0) break // end of file: a short read
        done += bytesRead
      }
    } catch (err) {
      p.filling = false
      p.answer(p.endedWhileFilling ? -E.EIO : this.errnoOf('read', err))
      return
    }
    p.filling = false
    p.answer(p.endedWhileFilling ? -E.EIO : done)
  }

  private operations(): Fuse.Operations {
    const ops = this.ops
    const rofs = (op: string) => (...args: unknown[]) => {
      this.request<[]>(op, args[args.length - 1] as Reply<[]>, (reply) => reply(-E.EROFS))
    }
    const ok = (op: string) => (...args: unknown[]) => {
      this.request<[]>(op, args[args.length - 1] as Reply<[]>, (reply) => reply(0))
    }
    const getattr = (path: string, cb: Fuse.DoneWith<Fuse.Stat>) => this.request<[Fuse.Stat?]>('getattr', cb, async (reply) => {
      reply(0, toStat(await ops.getattr(await this.resolve(path))))
    })
    return {
      init: (cb) => cb(0),
      getattr,
      // fuse-native 2.2.6 answers fgetattr through ops.getattr(path); this only makes libfuse register it.
      fgetattr: (path, _fd, cb) => getattr(path, cb),

      access: (path, mode, cb) => this.request<[]>('access', cb, async (reply) => {
        const ino = await this.resolve(path)
        if (mode & fsConstants.W_OK) return reply(-E.EROFS)
        await ops.access(ino, mode)
        reply(0)
      }),

      statfs: (_path, cb) => this.request<[Fuse.Statfs?]>('statfs', cb, async (reply) => {
        if (this.probing && this.lastStatfs) return reply(0, this.lastStatfs)
        this.lastStatfs = packStatfs(await ops.statfs())
        reply(0, this.lastStatfs)
      }),

      opendir: (path, _flags, cb) => this.request<[number?]>('opendir', cb, async (reply) => {
        const ino = await this.resolve(path)
        const fh = await ops.opendir(ino)
        const handle = this.allocateHandle()
        this.dirs.set(handle, { ino, fh, path })
        reply(0, handle)
      }),

      releasedir: (_path, handle, cb) => this.request<[]>('releasedir', cb, async (reply) => {
        const dir = this.dirs.get(handle)
        this.dirs.delete(handle)
        if (dir) await ops.releasedir(dir.ino, dir.fh)
        reply(0)
      }),

      readdir: (path, cb) => this.request<[string[]?, Fuse.Stat[]?]>('readdir', cb, async (reply) => {
        const entries = await this.listing(path, await this.resolve(path))
        // Stats carry d_ino (readdir_ino/use_ino); fuse-native ignores them unless there is one per name.
        reply(0, entries.map((e) => e.name), entries.map((e) => toStat(e.attr)))
      }),

      readlink: (path, cb) => this.request<[string?]>('readlink', cb, async (reply) => {
        reply(0, await ops.readlink(await this.resolve(path)))
      }),

      open: (path, flags, cb) => this.request<[number?]>('open', cb, async (reply) => {
        if ((flags & O_ACCMODE) !== fsConstants.O_RDONLY || (flags & WRITE_OPEN_FLAGS) !== 0) return reply(-E.EROFS)
        const ino = await this.resolve(path)
        const opened = await ops.open(ino, flags)
        const fh = typeof opened === 'number' ? opened : opened.fh
        const handle = this.allocateHandle()
        this.files.set(handle, { ino, fh, path })
        reply(0, handle)
      }),

      release: (_path, handle, cb) => this.request<[]>('release', cb, async (reply) => {
        const file = this.files.get(handle)
        this.files.delete(handle)
        if (file) await ops.release(file.ino, file.fh)
        reply(0)
      }),

      read: (_path, handle, buffer, length, position, cb) => this.request<[]>('read', cb, async (_reply, p) => {
        const file = this.files.get(handle)
        if (!file) return p.answer(-E.EBADF)
        await this.read(p, file, buffer, length, position)
      }),

      getxattr: (path, name, _position, cb) => this.request<[Buffer?]>('getxattr', cb, async (reply) => {
        reply(0, await ops.getxattr(await this.resolve(path), name))
      }),

      listxattr: (path, cb) => this.request<[string[]?]>('listxattr', cb, async (reply) => {
        reply(0, await ops.listxattr(await this.resolve(path)))
      }),

      // Nothing is ever dirty on a read-only filesystem.
      flush: ok('flush'),
      fsync: ok('fsync'),
      fsyncdir: ok('fsyncdir'),

      // Every modifying op: the `ro` mount makes the kernel refuse most of these before they get here.
      write: (_path, _fd, _buffer, _length, _position, cb) => this.request<[]>('write', cb, (reply) => reply(-E.EROFS)),
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
}
