/**
 * FuseBinding over our own addon (native/, libfuse 3 low-level API).
 *
 * The addon hands every request to onEvent() on the JavaScript thread and never waits for the answer, so
 * any number of requests can wait on the network at once. Each is answered through one native reply call;
 * the addon drops a second or late answer (after the session ended it has answered everything with EIO).
 * Reads answered with a FileRange are written by the addon's own threads straight from the file.
 */
import { constants as osConstants } from 'node:os'
import { promises as fsp } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import {
  FuseErrno, isFileRange,
  type FuseAttr, type FuseBinding, type FuseDirEntry, type FuseMountOptions, type FuseOps, type FuseSession,
  type FuseStatfs, type ReadReply,
} from './binding.js'
import {
  escapeMountOption, findMount, detachThenEnd, isOurMount, lazyUnmount, prepareMountpoint, tuneMount, type MountDevice,
} from './mount-table.js'
import { CnaifsError, errorMessage } from '../util/errors.js'

const E = osConstants.errno

/** The largest request libfuse 3 and the kernel (FUSE_MAX_MAX_PAGES = 256 pages) agree on. */
const MAX_REQUEST = 1024 * 1024
/** Before FUSE_MAX_PAGES (protocol 7.28) the kernel sends at most 32 pages per request. */
const LEGACY_MAX_REQUEST = 128 * 1024
/**
 * libfuse worker threads: they only read a request and queue it (or answer it on the spot), so two keep up
 * with the kernel; a few more cover a worker descheduled mid-dispatch.
 */
const WORKER_THREADS = 4
/**
 * Threads answering FileRange reads. From the page cache each reply is a copy that two threads (two vCPUs
 * here) already saturate; from a cold page cache each blocks on the disk, so more of them keep more reads in
 * flight on the device.
 */
const REPLY_THREADS = 8
/**
 * How a pool thread answers a FileRange: by default it preads into its own reusable buffer and writes the
 * reply (two copies, no allocation per reply). CNAIFS_FUSE_SPLICE=1 makes libfuse splice the file into the
 * reply instead (page references into a pipe, one copy fewer), which needs pipes over 1 MiB that only root
 * may make (else libfuse falls back to an allocating copy). On the shared 2-vCPU machine splice used no less
 * server CPU per GiB; see docs/fuse-bindings.md.
 */
const SPLICE = process.env.CNAIFS_FUSE_SPLICE === '1'

// -----------------------------------------------------------------------------------------------------------
// The addon's interface (native/src/addon.c)

type NativeHandle = object & { readonly __cnaifsFuseHandle: unique symbol }

interface NativeConfig {
  attrTimeoutS: number
  entryTimeoutS: number
  negativeTimeoutS: number
  maxBackground: number
  congestionThreshold: number
  maxWrite: number
  maxReadahead: number
  workerThreads: number
  replyThreads: number
  splice: boolean
  wantForget: boolean
}

type OnEvent = (event: number, id: number, ino: number, a: number, b: number, c: number, extra: string | Float64Array | undefined) => void

export interface Fuse3Native {
  mount(mountpoint: string, options: string, config: NativeConfig, onEvent: OnEvent): NativeHandle
  exit(h: NativeHandle): number
  pending(h: NativeHandle): number
  replyErr(h: NativeHandle, id: number, errno: number): boolean
  replyEntry(h: NativeHandle, id: number, attr: Float64Array | null): boolean
  replyAttr(h: NativeHandle, id: number, attr: Float64Array): boolean
  replyOpen(h: NativeHandle, id: number, fh: number, isDirectory: boolean, flags?: number): boolean
  replyBuf(h: NativeHandle, id: number, data: Buffer): boolean
  replyFile(h: NativeHandle, id: number, fd: number, position: number, length: number): boolean
  replyReadlink(h: NativeHandle, id: number, target: string): boolean
  replyXattrSize(h: NativeHandle, id: number, size: number): boolean
  replyStatfs(h: NativeHandle, id: number, fields: Float64Array): boolean
  replyDir(h: NativeHandle, id: number, plus: boolean, size: number, firstOffset: number, names: Buffer, attrs: Float64Array, count: number): number
  version(): string
  events: Record<'MOUNTED' | 'INIT' | 'ENDED' | 'FORGET' | 'BATCH_FORGET' | 'LOOKUP' | 'GETATTR' | 'READLINK' | 'OPEN'
    | 'READ' | 'RELEASE' | 'OPENDIR' | 'READDIR' | 'READDIRPLUS' | 'RELEASEDIR' | 'GETXATTR' | 'LISTXATTR' | 'STATFS' | 'ACCESS', number>
  layout: { attrFields: number; statfsFields: number }
}

/** Where `npm ci` (native/build.mjs) puts the addon: <repo>/native/build/Release, two levels above src/fuse and dist/fuse. */
export const FUSE3_ADDON_PATH = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..', 'native', 'build', 'Release', 'cnaifs_fuse.node')

/** Loads the addon; throws with the loader's reason (missing build, missing libfuse3.so.3 …). */
export function loadFuse3Native(path = FUSE3_ADDON_PATH): Fuse3Native {
  const require = createRequire(import.meta.url)
  let native: Fuse3Native
  try {
    native = require(path) as Fuse3Native
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND') throw new Error(`the addon is not built (${path} is missing)`)
    throw err
  }
  if (typeof native.mount !== 'function' || native.layout?.attrFields !== ATTR_FIELDS) {
    throw new Error(`${path} is not a compatible build of the cnaifs FUSE addon (rebuild it: npm rebuild or npm ci)`)
  }
  return native
}

// replyOpen's flags (reply_open in native/src/addon.c).
const OPEN_NO_KEEP_CACHE = 1
const OPEN_DIRECT_IO = 2

// Field order of the attribute and statfs arrays (cn_attr_field / cn_statfs_field in native/src/cnaifs_fuse.h).
const ATTR_FIELDS = 12
const STATFS_FIELDS = 9

function packAttr(attr: FuseAttr, out: Float64Array, at: number): void {
  out[at] = attr.ino
  out[at + 1] = attr.mode
  out[at + 2] = attr.nlink
  out[at + 3] = attr.uid
  out[at + 4] = attr.gid
  out[at + 5] = attr.size
  out[at + 6] = attr.blocks
  out[at + 7] = attr.blksize
  out[at + 8] = attr.atimeMs
  out[at + 9] = attr.mtimeMs
  out[at + 10] = attr.ctimeMs
  out[at + 11] = attr.cacheTimeoutS ?? -1
}

function attrArray(attr: FuseAttr): Float64Array {
  const out = new Float64Array(ATTR_FIELDS)
  packAttr(attr, out, 0)
  return out
}

function statfsArray(s: FuseStatfs): Float64Array {
  return Float64Array.of(s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.favail, s.namemax)
}

/** The -o list every cnaifs mount gets: read-only, no setuid or device files, kernel-side permission checks. */
export function fuse3MountOptions(o: FuseMountOptions): string {
  const opts = ['ro', 'nosuid', 'nodev', 'default_permissions', `fsname=${escapeMountOption(o.fsname)}`, `subtype=${escapeMountOption(o.subtype)}`]
  if (o.allowOther) opts.push('allow_other')
  return opts.join(',')
}

function isPromiseLike<T>(v: unknown): v is PromiseLike<T> {
  return typeof v === 'object' && v !== null && typeof (v as { then?: unknown }).then === 'function'
}

// -----------------------------------------------------------------------------------------------------------

export class Fuse3Binding implements FuseBinding {
  readonly name = 'fuse3' as const

  constructor(private readonly native: Fuse3Native) {}

  async mount(mountpoint: string, ops: FuseOps, options: FuseMountOptions): Promise<FuseSession> {
    const prepared = await prepareMountpoint(mountpoint)
    const session = new Fuse3Session(this.native, prepared.mountpoint, ops, options)
    await session.start()
    return session
  }
}

/** A directory handle: the filesystem's own handle and its listing, fetched once and paged by offset. */
interface DirHandle {
  ino: number
  fh: number
  listing?: Promise<FuseDirEntry[]>
}

class Fuse3Session implements FuseSession {
  readonly binding = 'fuse3' as const
  readonly ended: Promise<void>
  maxRead = LEGACY_MAX_REQUEST

  private handle!: NativeHandle
  private readonly ev: Fuse3Native['events']
  private readonly dirs = new Map<number, DirHandle>()
  private nextDir = 0
  private dev: MountDevice | undefined
  private isEnded = false
  private unmounting: Promise<void> | undefined
  private resolveEnded!: () => void
  private mounted: { resolve: () => void; reject: (err: Error) => void } | undefined
  private initialised: { resolve: () => void; reject: (err: Error) => void } | undefined

  constructor(
    private readonly native: Fuse3Native,
    readonly mountpoint: string,
    private readonly ops: FuseOps,
    private readonly options: FuseMountOptions,
  ) {
    this.ev = native.events
    this.ended = new Promise<void>((res) => { this.resolveEnded = res })
  }

  async start(): Promise<void> {
    const mounted = new Promise<void>((resolve, reject) => { this.mounted = { resolve, reject } })
    const initialised = new Promise<void>((resolve, reject) => { this.initialised = { resolve, reject } })
    // Both settle through the event handler; keep an early rejection from being reported as unhandled.
    initialised.catch(() => {})
    const o = this.options
    try {
      this.handle = this.native.mount(this.mountpoint, fuse3MountOptions(o), {
        attrTimeoutS: o.attrTimeoutS,
        entryTimeoutS: o.entryTimeoutS,
        negativeTimeoutS: o.negativeTimeoutS,
        maxBackground: o.maxBackground,
        congestionThreshold: o.congestionThreshold,
        maxWrite: MAX_REQUEST,
        maxReadahead: o.readaheadBytes,
        workerThreads: WORKER_THREADS,
        replyThreads: REPLY_THREADS,
        splice: SPLICE,
        wantForget: typeof this.ops.forget === 'function',
      }, (event, id, ino, a, b, c, extra) => this.onEvent(event, id, ino, a, b, c, extra))
    } catch (err) {
      // fuse_session_new refused the options (libfuse's message).
      throw new CnaifsError('EMOUNT', `cannot mount at ${this.mountpoint}: ${errorMessage(err)}`, { cause: err })
    }
    try {
      await mounted
      // In the mount table as soon as mount(2) returned; its device number tells our mount from any other.
      const m = await findMount(this.mountpoint)
      if (!m) throw new Error('the new mount is not in the mount table')
      this.dev = { major: m.major, minor: m.minor }
      await initialised
      // FUSE_INIT's reply reaches the kernel right after our init callback; a statfs waits for it (the kernel
      // holds requests until the connection is initialised), and tuning before it would be undone by it.
      await fsp.statfs(this.mountpoint)
      // Newer kernels also cap max_pages with a sysctl (fs.fuse.max_pages_limit, 256 by default).
      const limit = Number(await fsp.readFile('/proc/sys/fs/fuse/max_pages_limit', 'utf8').catch(() => ''))
      if (limit > 0) this.maxRead = Math.min(this.maxRead, limit * 4096)
    } catch (err) {
      if (!this.isEnded) await this.unmount().catch(() => {})
      throw err instanceof CnaifsError ? err : new CnaifsError('EMOUNT', `cannot mount at ${this.mountpoint}: ${errorMessage(err)}`, { cause: err })
    }
    await tuneMount(this.dev, { readaheadBytes: o.readaheadBytes })
  }

  pendingRequests(): number {
    return this.isEnded ? 0 : this.native.pending(this.handle)
  }

  unmount(): Promise<void> {
    if (this.isEnded) return this.ended
    this.unmounting ??= detachThenEnd(this.mountpoint, this.dev, () => this.native.exit(this.handle), this.ended)
    return this.unmounting
  }

  /** The loop ended. A connection aborted from outside leaves a dead mount behind: clear it if it is ours. */
  private async finish(): Promise<void> {
    this.isEnded = true
    this.dirs.clear()
    const mountError = new CnaifsError('EMOUNT', `cannot mount at ${this.mountpoint}: the FUSE session ended during mount`)
    this.mounted?.reject(mountError)
    this.initialised?.reject(mountError)
    try {
      if (this.dev && await isOurMount(this.mountpoint, this.dev)) await lazyUnmount(this.mountpoint)
    } catch {
      // A later mount at this path clears it (clearStaleMount); ended must resolve regardless.
    }
    this.resolveEnded()
  }

  // ---------------------------------------------------------------------------------------------------------
  // Requests

  private onEvent(event: number, id: number, ino: number, a: number, b: number, c: number, extra: string | Float64Array | undefined): void {
    const ev = this.ev
    const h = this.handle
    const n = this.native
    const ops = this.ops
    switch (event) {
      case ev.READ:
        return this.serve(id, 'read', () => ops.read(ino, a, b, c), (r) => this.answerRead(id, r, c))
      case ev.LOOKUP: {
        const name = extra as string
        return this.serve(id, 'lookup', () => ops.lookup(ino, name), (attr) => { n.replyEntry(h, id, attrArray(attr)) }, true)
      }
      case ev.GETATTR:
        return this.serve(id, 'getattr', () => ops.getattr(ino), (attr) => { n.replyAttr(h, id, attrArray(attr)) })
      case ev.READLINK:
        return this.serve(id, 'readlink', () => ops.readlink(ino), (target) => { n.replyReadlink(h, id, target) })
      case ev.OPEN:
        return this.serve(id, 'open', () => ops.open(ino, a), (r) => {
          if (typeof r === 'number') { n.replyOpen(h, id, r, false); return }
          n.replyOpen(h, id, r.fh, false, (r.keepCache === false ? OPEN_NO_KEEP_CACHE : 0) | (r.directIo ? OPEN_DIRECT_IO : 0))
        })
      case ev.RELEASE:
        return this.serve(id, 'release', () => ops.release(ino, a), () => { n.replyErr(h, id, 0) })
      case ev.OPENDIR:
        return this.serve(id, 'opendir', () => ops.opendir(ino), (fh) => {
          const dh = this.allocateDir()
          this.dirs.set(dh, { ino, fh })
          if (!n.replyOpen(h, id, dh, true)) this.dirs.delete(dh)
        })
      case ev.READDIR:
      case ev.READDIRPLUS:
        return this.serveReaddir(id, a, b, c, event === ev.READDIRPLUS)
      case ev.RELEASEDIR: {
        const dir = this.dirs.get(a)
        this.dirs.delete(a)
        if (!dir) { n.replyErr(h, id, 0); return }
        return this.serve(id, 'releasedir', () => ops.releasedir(dir.ino, dir.fh), () => { n.replyErr(h, id, 0) })
      }
      case ev.GETXATTR: {
        const name = extra as string
        return this.serve(id, 'getxattr', () => ops.getxattr(ino, name), (value) => this.answerXattr(id, value, c))
      }
      case ev.LISTXATTR:
        return this.serve(id, 'listxattr', () => ops.listxattr(ino), (names) => {
          this.answerXattr(id, Buffer.from(names.map((name) => name + '\0').join('')), c)
        })
      case ev.STATFS:
        return this.serve(id, 'statfs', () => ops.statfs(), (s) => { n.replyStatfs(h, id, statfsArray(s)) })
      case ev.ACCESS:
        return this.serve(id, 'access', () => ops.access(ino, a), () => { n.replyErr(h, id, 0) })
      case ev.FORGET:
        this.forget(ino, a)
        return
      case ev.BATCH_FORGET: {
        const pairs = extra as Float64Array
        for (let i = 0; i + 1 < pairs.length; i += 2) this.forget(pairs[i], pairs[i + 1])
        return
      }
      case ev.MOUNTED:
        if (extra === undefined) this.mounted?.resolve()
        else this.mounted?.reject(new CnaifsError('EMOUNT', `cannot mount at ${this.mountpoint}: ${extra}`))
        this.mounted = undefined
        return
      case ev.INIT:
        // max_pages = ceil(max_write / page) since protocol 7.28, which is what caps a read request.
        this.maxRead = c >= 28 ? Math.ceil(a / 4096) * 4096 : LEGACY_MAX_REQUEST
        this.initialised?.resolve()
        this.initialised = undefined
        return
      case ev.ENDED:
        void this.finish()
        return
      default:
        if (id) n.replyErr(h, id, E.ENOSYS)
    }
  }

  /**
   * Runs one operation and answers it with `answer`, or with the errno it threw. `missIsEntry`: a lookup's
   * ENOENT is answered as a negative entry (the kernel caches the miss for negativeTimeoutS).
   */
  private serve<T>(id: number, op: string, call: () => T | Promise<T>, answer: (value: T) => void, missIsEntry = false): void {
    let result: T | Promise<T>
    try {
      result = call()
    } catch (err) {
      this.fail(id, op, err, missIsEntry)
      return
    }
    if (isPromiseLike<T>(result)) {
      result.then((value) => this.answer(id, op, answer, value), (err: unknown) => this.fail(id, op, err, missIsEntry))
    } else {
      this.answer(id, op, answer, result)
    }
  }

  private answer<T>(id: number, op: string, answer: (value: T) => void, value: T): void {
    try {
      answer(value)
    } catch (err) {
      // A malformed answer (wrong type from the filesystem): the addon validated it before taking the request.
      this.fail(id, op, err, false)
    }
  }

  private fail(id: number, op: string, err: unknown, missIsEntry: boolean): void {
    let errno = E.EIO
    if (err instanceof FuseErrno && err.errno > 0) {
      errno = err.errno
    } else {
      try {
        this.options.onUnexpected?.(op, err)
      } catch { /* a reporting hook must not break the answer */ }
    }
    if (missIsEntry && errno === E.ENOENT) this.native.replyEntry(this.handle, id, null)
    else this.native.replyErr(this.handle, id, errno)
  }

  private answerRead(id: number, r: ReadReply, size: number): void {
    if (isFileRange(r)) {
      this.native.replyFile(this.handle, id, r.fd, r.position, Math.min(r.length, size))
    } else {
      this.native.replyBuf(this.handle, id, r.length > size ? r.subarray(0, size) : r)
    }
  }

  /** getxattr/listxattr: a size probe (size 0) gets the length; a value that does not fit, ERANGE. */
  private answerXattr(id: number, value: Buffer, size: number): void {
    if (size === 0) this.native.replyXattrSize(this.handle, id, value.length)
    else if (value.length > size) this.native.replyErr(this.handle, id, E.ERANGE)
    else this.native.replyBuf(this.handle, id, value)
  }

  private serveReaddir(id: number, dh: number, offset: number, size: number, plus: boolean): void {
    const dir = this.dirs.get(dh)
    if (!dir) { this.native.replyErr(this.handle, id, E.EBADF); return }
    if (!dir.listing) {
      const listing = Promise.resolve().then(() => this.ops.readdir(dir.ino, dir.fh))
      // A failed listing is not kept: the next readdir on this handle asks again.
      listing.catch(() => { if (dir.listing === listing) dir.listing = undefined })
      dir.listing = listing
    }
    this.serve(id, plus ? 'readdirplus' : 'readdir', () => dir.listing!, (entries) => this.answerDir(id, entries, offset, size, plus))
  }

  private answerDir(id: number, entries: FuseDirEntry[], offset: number, size: number, plus: boolean): void {
    // Entries smaller than the smallest dirent cannot fit; a page never holds more than size / 24 of them.
    const count = Math.max(0, Math.min(entries.length - offset, Math.ceil(size / 24)))
    const page = entries.slice(offset, offset + count)
    const names = Buffer.from(page.map((e) => e.name + '\0').join(''))
    const attrs = new Float64Array(page.length * ATTR_FIELDS)
    page.forEach((e, i) => packAttr(e.attr, attrs, i * ATTR_FIELDS))
    this.native.replyDir(this.handle, id, plus, size, offset, names, attrs, page.length)
  }

  private forget(ino: number, nlookup: number): void {
    try {
      this.ops.forget?.(ino, nlookup)
    } catch (err) {
      try { this.options.onUnexpected?.('forget', err) } catch { /* ignore */ }
    }
  }

  private allocateDir(): number {
    do {
      this.nextDir = this.nextDir >= Number.MAX_SAFE_INTEGER ? 1 : this.nextDir + 1
    } while (this.dirs.has(this.nextDir))
    return this.nextDir
  }
}
