/**
 * File reads on top of the blob cache: the data path the FUSE adapter calls (FileDataPath). A read whose
 * blocks are ready is answered at once, synchronously, with the range of the blob's data file that holds
 * them; a read that misses waits for the fetch that covers it (single flight, its own deadline) and is then
 * answered the same way. Sequential reads earn a read-ahead window (prefetch-window.ts) fetched in whole
 * fetch-part-aligned parts, under one byte budget shared by every open file.
 *
 * A failed read is replayed, at once, to a read of the same handle that overlaps it within failedReadReplayMs
 * (unless the bytes arrived meanwhile): the kernel retries a failed readahead with a synchronous read of the
 * same page straight away, and without the replay every read the registry cannot serve would wait for the
 * deadline twice before the program sees EIO.
 */
import { read as readFd } from 'node:fs'
import { promisify } from 'node:util'
import { DEFAULTS } from '../util/defaults.js'
import { CnaifsError, errorMessage } from '../util/errors.js'
import { silentLogger, type Logger } from '../util/log.js'
import type { BlobCache, BlobLease } from './blob-cache.js'
import type { CachedBlob } from './cached-blob.js'
import { SequentialWindow, type WindowSettings } from './prefetch-window.js'
import type { BlobRef, BlobSource, FileDataPath, FileExtent, FileReadHandle, ReadResult } from './types.js'
import { setMaxListeners } from 'node:events'

const preadAsync = promisify(readFd)
const MAX_REMEMBERED_FAILURES = 16

export interface FileReaderOptions {
  cache: BlobCache
  /** Where each blob's missing blocks come from. */
  sourceFor: (blob: BlobRef) => BlobSource
  readTimeoutMs?: number
  /** Bytes of read-ahead in flight across all open files. */
  prefetchBudgetBytes?: number
  window?: Partial<WindowSettings>
  failedReadReplayMs?: number
  log?: Logger
  observer?: FileReaderObserver
}

export interface FileReaderObserver {
  /** A read answered without waiting (hit) or after waiting for blocks (miss), with its bytes. */
  onRead?(hit: boolean, bytes: number): void
}

interface FailedRead { at: number; start: number; end: number; error: unknown }

class Handle implements FileReadHandle {
  released = false
  failures: FailedRead[] = []
  constructor(readonly extent: FileExtent, readonly lease: BlobLease, readonly window: SequentialWindow) {}
}

export class FileReader implements FileDataPath {
  private readonly cache: BlobCache
  private readonly readTimeoutMs: number
  private readonly budgetBytes: number
  private readonly windowSettings: WindowSettings
  private readonly replayMs: number
  private readonly log: Logger
  private readonly observer: FileReaderObserver
  private prefetchInFlight = 0
  private readonly prefetches = new Set<Promise<void>>()

  constructor(private readonly o: FileReaderOptions) {
    this.cache = o.cache
    this.readTimeoutMs = o.readTimeoutMs ?? DEFAULTS.read.timeoutMs
    this.budgetBytes = o.prefetchBudgetBytes ?? DEFAULTS.read.memoryBudgetBytes / 2
    this.windowSettings = {
      initialWindowBytes: o.window?.initialWindowBytes ?? DEFAULTS.read.initialWindowBytes,
      maxWindowBytes: o.window?.maxWindowBytes ?? DEFAULTS.read.maxWindowBytes,
      runLookaheadFactor: o.window?.runLookaheadFactor ?? DEFAULTS.read.runLookaheadFactor,
      outOfOrderToleranceBytes: o.window?.outOfOrderToleranceBytes ?? DEFAULTS.read.outOfOrderToleranceBytes,
      minRunBytes: o.window?.minRunBytes ?? DEFAULTS.read.minRunBytes,
    }
    this.replayMs = o.failedReadReplayMs ?? DEFAULTS.read.failedReadReplayMs
    this.log = o.log ?? silentLogger()
    this.observer = o.observer ?? {}
  }

  open(extent: FileExtent): FileReadHandle {
    const lease = this.cache.lease(extent.blob, this.o.sourceFor(extent.blob))
    return new Handle(extent, lease, new SequentialWindow(this.windowSettings))
  }

  read(handle: FileReadHandle, offset: number, length: number): ReadResult | Promise<ReadResult> {
    const h = this.own(handle)
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new CnaifsError('EINVAL', `bad read: ${length} bytes at offset ${offset}`)
    }
    const end = Math.min(offset + length, h.extent.size)
    if (end <= offset) return Buffer.alloc(0)
    const blob = h.lease.blob
    const start = h.extent.offset + offset
    const stop = h.extent.offset + end
    const B = this.cache.blockSize
    const first = Math.floor(start / B)
    const last = Math.floor((stop - 1) / B)
    if (blob.readyOnDisk(first, last)) {
      this.readAhead(h, offset, end)
      this.observer.onRead?.(true, stop - start)
      return { fd: blob.fd, position: start, length: stop - start }
    }
    const replay = this.recentFailure(h, offset, end)
    if (replay) throw replay.error
    // The first read of a blob in this process: open its map, then decide how to serve the read.
    if (!blob.loaded) return blob.load().then(() => this.read(h, offset, length))
    const signal = AbortSignal.timeout(this.readTimeoutMs)
    const failed = (err: unknown): never => {
      h.failures.push({ at: performance.now(), start: offset, end, error: err })
      if (h.failures.length > MAX_REMEMBERED_FAILURES) h.failures.shift()
      throw err
    }
    // ensure() claims this read's missing blocks before read-ahead looks for blocks to fetch.
    const ready = blob.ensure(first, last, signal, { bytes: { start, stop } })
    try {
      this.readAhead(h, offset, end)
    } catch (err) {
      this.log.debug({ digest: blob.ref.digest, error: errorMessage(err) }, 'read-ahead not started') // never fails the read
    }
    return ready.then(() => {
      this.observer.onRead?.(false, stop - start)
      return this.answer(blob, first, last, start, stop)
    }, failed)
  }

  release(handle: FileReadHandle): void {
    const h = this.own(handle)
    h.released = true
    h.lease.release()
  }

  cachedBytes(extent: FileExtent): number {
    return this.cache.cachedBytes(extent.blob, extent.offset, extent.offset + extent.size)
  }

  /** Bytes of read-ahead being fetched now (bounded by the budget). */
  prefetchBytesInFlight(): number {
    return this.prefetchInFlight
  }

  /** Resolves when no read-ahead is in flight (for shutdown and tests). */
  async whenIdle(): Promise<void> {
    while (this.prefetches.size) await Promise.all([...this.prefetches])
  }

  /** The ready blocks as a range of the data file, or (blocks held in memory) as a Buffer. */
  private answer(blob: CachedBlob, first: number, last: number, start: number, stop: number): ReadResult | Promise<ReadResult> {
    let memory = false
    for (let n = first; n <= last && !memory; n++) memory = blob.inMemory(n)
    if (!memory) return { fd: blob.fd, position: start, length: stop - start }
    return this.assemble(blob, first, last, start, stop)
  }

  /** Copies the bytes out of memory blocks and the data file (only when the disk refused some blocks). */
  private async assemble(blob: CachedBlob, first: number, last: number, start: number, stop: number): Promise<Buffer> {
    const B = this.cache.blockSize
    const out = Buffer.allocUnsafe(stop - start)
    for (let n = first; n <= last; n++) {
      const from = Math.max(start, n * B)
      const to = Math.min(stop, (n + 1) * B)
      const held = blob.memoryBlock(n)
      if (held && blob.inMemory(n)) {
        held.copy(out, from - start, from - n * B, to - n * B)
        continue
      }
      const { bytesRead } = await preadAsync(blob.fd, out, from - start, to - from, from)
      if (bytesRead !== to - from) throw new CnaifsError('EIO', `blob ${blob.ref.digest}: short read of block ${n} from the cache`)
    }
    return out
  }

  private own(handle: FileReadHandle): Handle {
    if (!(handle instanceof Handle)) throw new CnaifsError('EINVAL', 'not a handle opened by this reader')
    if (handle.released) throw new CnaifsError('EINVAL', 'the handle was released')
    return handle
  }

  /** A failure of this handle within the replay interval whose range overlaps [offset, end). */
  private recentFailure(h: Handle, offset: number, end: number): FailedRead | undefined {
    if (!h.failures.length) return undefined
    const now = performance.now()
    h.failures = h.failures.filter((f) => now - f.at < this.replayMs)
    return h.failures.find((f) => f.start < end && offset < f.end)
  }

  /** Updates the handle's sequential state and, for a sequential read, fetches the window after it. */
  private readAhead(h: Handle, offset: number, end: number): void {
    const range = h.window.onRead(offset, end)
    if (!range) return
    const extent = h.extent
    let to = Math.min(range.to, extent.size)
    if (to < extent.size) {
      // Whole fetch-part-aligned parts: a steady scan then makes one GET per part instead of one at every
      // block boundary it crosses (each GET costs the registry a few ms).
      const part = this.cache.fetchPartBytes
      const aligned = Math.floor((extent.offset + to) / part) * part - extent.offset
      if (aligned > range.from) to = aligned
    }
    const available = this.budgetBytes - this.prefetchInFlight
    if (range.from >= to || available <= 0) return
    const B = this.cache.blockSize
    const first = Math.floor((extent.offset + range.from) / B)
    const last = Math.floor((extent.offset + to - 1) / B)
    const signal = AbortSignal.timeout(this.readTimeoutMs)
    setMaxListeners(0, signal) // one listener per read-ahead part it keeps alive (up to budget / part size)
    const started = h.lease.blob.prefetch(first, last, available, signal)
    if (!started.bytes) return
    this.prefetchInFlight += started.bytes
    const task: Promise<void> = started.done.finally(() => {
      this.prefetchInFlight -= started.bytes
      this.prefetches.delete(task)
    })
    this.prefetches.add(task)
  }
}
