/**
 * File reads on top of the block cache, with sequential read-ahead in the style of mountpoint-s3.
 *
 * Decisions:
 * - A read is sequential when it starts exactly where the handle's previous read ended; the first read of a
 *   handle counts as sequential when it starts at offset 0 (a whole-file scan is by far the commonest way to
 *   start), so `cat` and loaders prefetch from their first read. Any other read resets the window, and a
 *   random read fetches only the blocks it covers.
 * - The read-ahead window starts at initialWindowBytes and doubles with each sequential read up to
 *   maxWindowBytes, but never exceeds RUN_LOOKAHEAD_FACTOR times the bytes read by the current sequential run
 *   (and never drops below initialWindowBytes for that). FUSE hands us 128 KiB reads: without that bound a
 *   1 MiB pread in the middle of a file (8 reads) doubled the window 7 times and fetched ~64 MiB ahead.
 *   Each sequential read asks for [read end, read end + window); blocks already present or in flight are
 *   skipped by the cache, so a steady scan only fetches the window's new tail.
 * - Prefetch runs under its own deadline (readTimeoutMs): a read that later needs a block joins the fetch
 *   and keeps it alive with its own deadline. Prefetch failures are logged at debug: the read that needs the
 *   block will fetch it again and report the error itself.
 * - memoryBudgetBytes bounds the bytes of all prefetch fetches in flight across handles. A prefetch is cut
 *   to what fits (whole blocks, in order) or skipped; reads a process waits for never consult the budget.
 * - Returned buffers are fresh copies, so a caller can never modify the cached blocks.
 * - A failed read is replayed, at once, to a read of the same handle that overlaps it within
 *   FAILED_READ_REPLAY_MS (unless the bytes have arrived meanwhile). The kernel's page cache retries a
 *   failed readahead with a synchronous read of the same page straight away; without the replay every
 *   read the registry cannot serve would wait for readTimeoutMs twice before the program sees EIO.
 */
import { CnaifsError, errorMessage } from '../util/errors.js'
import { silentLogger, type Logger } from '../util/log.js'
import type { BlockCache } from './block-cache.js'
import type { BlobRangeFetcher, FileContentReader, FileExtent, ReadHandle } from './types.js'

export const DEFAULT_READ_TIMEOUT_MS = 30_000
export const DEFAULT_PREFETCH_BUDGET_BYTES = 256 * 1024 * 1024
export const DEFAULT_MAX_WINDOW_BYTES = 64 * 1024 * 1024
export const DEFAULT_INITIAL_WINDOW_BYTES = 1024 * 1024
/** How long a failed read of a handle is answered with the same error for overlapping reads of that handle. */
export const FAILED_READ_REPLAY_MS = 1000
/** The read-ahead window is at most this many times the bytes the current sequential run has read. */
export const RUN_LOOKAHEAD_FACTOR = 4
/** How far out of order the kernel's parallel readahead reads may arrive and still continue a run. */
export const OUT_OF_ORDER_TOLERANCE_BYTES = 16 * 1024 * 1024
const MAX_REMEMBERED_FAILURES = 16

interface FailedRead { at: number; start: number; end: number; error: unknown }

export interface CachedFileReaderOptions {
  cache: BlockCache
  fetch: BlobRangeFetcher
  readTimeoutMs?: number
  memoryBudgetBytes?: number
  maxWindowBytes?: number
  initialWindowBytes?: number
  log?: Logger
}

/** Per-open-file state: where the last read ended and the current read-ahead window. */
class FileHandle implements ReadHandle {
  /** File offset where the previous read ended; undefined before the first read. */
  nextOffset: number | undefined
  window = 0
  /** Bytes read by the current sequential run (since the last non-sequential read). */
  runBytes = 0
  released = false
  /** Recent failed reads (file offsets), newest last; see FAILED_READ_REPLAY_MS. */
  failures: FailedRead[] = []
  constructor(readonly extent: FileExtent) {}
}

export class CachedFileReader implements FileContentReader {
  private readonly cache: BlockCache
  private readonly fetch: BlobRangeFetcher
  private readonly readTimeoutMs: number
  private readonly budgetBytes: number
  private readonly maxWindowBytes: number
  private readonly initialWindowBytes: number
  private readonly log: Logger
  private prefetchInFlight = 0
  private readonly prefetches = new Set<Promise<void>>()

  constructor(o: CachedFileReaderOptions) {
    this.cache = o.cache
    this.fetch = o.fetch
    this.readTimeoutMs = o.readTimeoutMs ?? DEFAULT_READ_TIMEOUT_MS
    this.budgetBytes = o.memoryBudgetBytes ?? DEFAULT_PREFETCH_BUDGET_BYTES
    this.maxWindowBytes = o.maxWindowBytes ?? DEFAULT_MAX_WINDOW_BYTES
    this.initialWindowBytes = Math.min(o.initialWindowBytes ?? DEFAULT_INITIAL_WINDOW_BYTES, this.maxWindowBytes)
    this.log = o.log ?? silentLogger()
  }

  open(extent: FileExtent): ReadHandle {
    return new FileHandle(extent)
  }

  async read(handle: ReadHandle, offset: number, length: number): Promise<Buffer> {
    const h = this.own(handle)
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new CnaifsError('EINVAL', `bad read: ${length} bytes at offset ${offset}`)
    }
    const end = Math.min(offset + length, h.extent.size)
    if (end <= offset) return Buffer.alloc(0)
    const { blob } = h.extent
    const start = h.extent.offset + offset
    const stop = h.extent.offset + end
    const replay = this.recentFailure(h, offset, end)
    if (replay && this.cache.cachedBytes(blob, start, stop) < stop - start) throw replay.error
    const B = this.cache.blockSize
    const first = Math.floor(start / B)
    const blocks = this.cache.getBlocks(blob, first, Math.floor((stop - 1) / B), this.fetch, AbortSignal.timeout(this.readTimeoutMs))
    // After getBlocks has claimed this read's missing blocks, so read-ahead never fetches them a second time.
    try {
      this.readAhead(h, offset, end)
    } catch (err) {
      this.log.debug({ digest: blob.digest, error: errorMessage(err) }, 'prefetch not started') // never fails the read
    }
    try {
      return copyRange(await blocks, first * B, start, stop)
    } catch (err) {
      h.failures.push({ at: performance.now(), start: offset, end, error: err })
      if (h.failures.length > MAX_REMEMBERED_FAILURES) h.failures.shift()
      throw err
    }
  }

  /** A failure of this handle within FAILED_READ_REPLAY_MS whose range overlaps [offset, end); forgets older ones. */
  private recentFailure(h: FileHandle, offset: number, end: number): FailedRead | undefined {
    if (!h.failures.length) return undefined
    const now = performance.now()
    h.failures = h.failures.filter((f) => now - f.at < FAILED_READ_REPLAY_MS)
    return h.failures.find((f) => f.start < end && offset < f.end)
  }

  release(handle: ReadHandle): void {
    this.own(handle).released = true
  }

  cachedBytes(extent: FileExtent): number {
    return this.cache.cachedBytes(extent.blob, extent.offset, extent.offset + extent.size)
  }

  /** Bytes of prefetch currently being fetched (bounded by memoryBudgetBytes). */
  prefetchBytesInFlight(): number {
    return this.prefetchInFlight
  }

  /** Resolves when no prefetch is in flight (for shutdown and tests). */
  async whenIdle(): Promise<void> {
    while (this.prefetches.size) await Promise.all([...this.prefetches])
  }

  private own(handle: ReadHandle): FileHandle {
    if (!(handle instanceof FileHandle)) throw new CnaifsError('EBADF', 'not a handle opened by this reader')
    if (handle.released) throw new CnaifsError('EBADF', 'the handle was released')
    return handle
  }

  /** Updates the handle's sequential state and, for a sequential read, prefetches the window after it. */
  private readAhead(h: FileHandle, offset: number, end: number): void {
    const frontier = h.nextOffset ?? 0
    // The kernel's readahead keeps up to max_background reads in flight and they reach us in any order, so
    // while a run is going a read near the highest end seen so far continues it; otherwise only an exact
    // continuation starts one (random readers never trigger read-ahead).
    const tolerance = Math.min(OUT_OF_ORDER_TOLERANCE_BYTES, 2 * h.window) // grows with the run, as the kernel's readahead does
    const sequential = offset === frontier || (h.window > 0 && Math.abs(offset - frontier) <= tolerance)
    h.nextOffset = sequential ? Math.max(frontier, end) : end
    if (!sequential) {
      h.window = 0
      h.runBytes = end - offset
      return
    }
    h.runBytes += end - offset
    const grown = h.window ? Math.min(h.window * 2, this.maxWindowBytes) : this.initialWindowBytes
    h.window = Math.min(grown, Math.max(this.initialWindowBytes, RUN_LOOKAHEAD_FACTOR * h.runBytes))
    const from = h.nextOffset
    this.prefetch(h.extent, from, Math.min(from + h.window, h.extent.size))
  }

  /** Starts fetching file range [from, to) in the background, cut to the remaining prefetch budget. */
  private prefetch(extent: FileExtent, from: number, to: number): void {
    if (to < extent.size) {
      // Whole fetch-size-aligned parts: a steady scan then makes one 8 MiB GET per 8 MiB read instead of a
      // 1 MiB GET at every block boundary it crosses (each GET costs the registry a few ms).
      const part = this.cache.maxFetchBytes
      const aligned = Math.floor((extent.offset + to) / part) * part - extent.offset
      if (aligned > from) to = aligned
    }
    const available = this.budgetBytes - this.prefetchInFlight
    if (from >= to || available <= 0) return
    const B = this.cache.blockSize
    const first = Math.floor((extent.offset + from) / B)
    const last = Math.floor((extent.offset + to - 1) / B)
    const started = this.cache.prefetch(extent.blob, first, last, this.fetch, AbortSignal.timeout(this.readTimeoutMs), available)
    if (!started.bytes) return
    this.prefetchInFlight += started.bytes
    const task: Promise<void> = started.done
      .catch((err: unknown) => {
        this.log.debug({ digest: extent.blob.digest, first, last, error: errorMessage(err) }, 'prefetch failed')
      })
      .finally(() => {
        this.prefetchInFlight -= started.bytes
        this.prefetches.delete(task)
      })
    this.prefetches.add(task)
  }
}

/** Copies blob bytes [start, stop) out of consecutive blocks whose first byte is at blob offset `base`. */
function copyRange(blocks: Buffer[], base: number, start: number, stop: number): Buffer {
  const out = Buffer.allocUnsafe(stop - start)
  let pos = base
  let written = 0
  for (const block of blocks) {
    const from = Math.max(start - pos, 0)
    const to = Math.min(stop - pos, block.length)
    if (to > from) written += block.copy(out, written, from, to)
    pos += block.length
  }
  return out
}
