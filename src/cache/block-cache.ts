/**
 * The block cache: fixed-size blocks of content-addressed blobs, in memory (LRU) and on disk, fetched from the
 * registry with ranged GETs on a miss.
 *
 * Block n of a blob covers blob bytes [n*B, min((n+1)*B, size)): blocks are aligned to the blob, not to the
 * files inside it, so every model and file sharing a layer shares its blocks.
 *
 * Decisions:
 * - Single flight: a missing block has at most one fetch in progress (the `inflight` map). Every reader that
 *   needs it joins that fetch and races its own deadline; the fetch itself is abandoned (its signal fires)
 *   only when every reader waiting on it has given up, so one reader's deadline never fails another's read.
 * - The disk presence index (which blocks exist, their sizes) is kept in memory, loaded at init and updated
 *   on write; another daemon's writes into a shared directory are seen at our next start. A block the index
 *   lists but the disk no longer has (another process evicted it), or has with the wrong size, is dropped
 *   from the index and fetched again.
 * - Disk writes happen after the read that fetched the block returns (it is served from memory meanwhile);
 *   `close()` and `flush()` wait for them. A block counts towards blob completeness once it is in memory with
 *   its disk write pending or on disk; a block whose disk write failed lives in memory only and does not.
 * - Integrity: a blob is hashed (sha256, block order) when its last block arrives, before the read or
 *   prefetch that completed it returns, and before any reader is given a block of it: readers that find a
 *   complete but unverified blob wait for the same verification. So a blob of one block is never served
 *   unverified. A blob of several blocks can have served bytes of its earlier blocks before the last one
 *   arrived; a mismatch then still fails every later read, but cannot recall bytes already returned.
 *   A mismatch drops every block of the blob and marks its digest corrupt for this process's lifetime:
 *   the registry would serve the same bytes again, so later reads fail at once without fetching.
 * - Eviction is by whole blob, least recently used first. Recency is an in-memory access counter seeded
 *   from the blob directory's mtime at init; the mtime is bumped at most once a minute per blob so recency
 *   survives restarts. Blobs with reads, fetches, pending writes or a verification in progress are pinned.
 * - `maxDiskBytes` counts block file bytes this process knows of (not directory entries or markers).
 * - Observer events are per block: onHit/onMiss once per block a read needed, onFetch once per ranged GET,
 *   onEvict once per blob evicted from disk (LRU eviction or prune).
 */
import { createHash } from 'node:crypto'
import { mkdir, readFile, unlink, utimes } from 'node:fs/promises'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { LRUCache } from 'lru-cache'
import { DeadlineError } from '../registry/errors.js'
import { digestHex } from '../util/digest.js'
import { CnaifsError, FormatError, UsageError, errorMessage } from '../util/errors.js'
import { silentLogger, type Logger } from '../util/log.js'
import {
  BLOCK_SIZE_FILE, COMPLETE_MARKER, blobDirOf, isNotFound, readBlockFile, removeBlobDir, scanStore, writeFileAtomic,
  type ScannedBlob,
} from './disk-store.js'
import { SharedFetch, raceSignal } from './shared-fetch.js'
import type { BlobRangeFetcher, BlobRef } from './types.js'

export const DEFAULT_BLOCK_SIZE = 1024 * 1024
export const DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024
/** Largest single ranged GET: big enough to amortise request latency, small enough to retry cheaply. */
export const MAX_FETCH_BYTES = 8 * 1024 * 1024
/** Blob directory mtimes (the persisted recency) are bumped at most this often per blob. */
const TOUCH_INTERVAL_MS = 60_000

export interface BlockCacheOptions {
  dir: string
  blockSize?: number
  memoryBytes?: number
  maxDiskBytes?: number
  /** Largest ranged GET; longer runs of missing blocks are split into parts fetched in parallel. Default 8 MiB. */
  maxFetchBytes?: number
  log?: Logger
  observer?: BlockCacheObserver
}

export interface BlockCacheObserver {
  onHit?(tier: 'memory' | 'disk', bytes: number): void
  onMiss?(bytes: number): void
  onFetch?(bytes: number, ms: number): void
  onCorruptBlob?(digest: string): void
  onEvict?(bytes: number): void
}

export interface CachedBlobInfo {
  digest: string
  /** Bytes of block files on disk. */
  bytes: number
  blocks: number
  /** Every block on disk; undefined when the blob's size is unknown (not complete and not read since start). */
  complete?: boolean
  lastAccess: Date
}

/** What `prefetch` started: the bytes it is fetching, and when they have all arrived (or failed). */
export interface PrefetchStarted {
  bytes: number
  done: Promise<void>
}

/** The registry served bytes that do not hash to the blob's digest. */
export class CorruptBlobError extends CnaifsError {
  readonly digest: string
  constructor(digest: string) {
    super('ECORRUPT', `blob ${digest} is corrupt: the bytes the registry served do not hash to its digest`)
    this.digest = digest
  }
}

/** What the cache knows about one blob. Never dropped from the map: in-flight work may hold a reference. */
class BlobState {
  /** Known once a caller names the blob, or from its complete marker. */
  size?: number
  /** Blocks on disk: block number → file bytes. */
  readonly disk = new Map<number, number>()
  diskBytes = 0
  /** Blocks held in memory whose disk write is in progress (disjoint from `disk`). */
  pendingWrites = 0
  readonly writes = new Set<Promise<void>>()
  /** Reads and fetches in progress: a pinned blob is never evicted. */
  pins = 0
  accessOrder = 0
  lastAccess: number
  /** Last time the directory mtime was set (or found at init). */
  lastTouch: number
  verified = false
  verifying?: Promise<void>
  /** Bumped when the blob is removed from disk, so writes started before then are not counted after. */
  generation = 0

  constructor(readonly digest: string, readonly hex: string, readonly dir: string, now: number) {
    this.lastAccess = now
    this.lastTouch = now
  }
}

interface InFlightBlock {
  fetch: SharedFetch<Buffer[]>
  /** Position of the block within the fetch's result. */
  index: number
}

interface StartedPart {
  first: number
  fetch: SharedFetch<Buffer[]>
}

export class BlockCache {
  readonly blockSize: number
  readonly maxFetchBytes: number
  private readonly dir: string
  private readonly maxDiskBytes: number
  private readonly log: Logger
  private readonly observer: BlockCacheObserver
  private readonly memory?: LRUCache<string, Buffer>
  /** Blocks whose disk write is in progress, so they stay readable if the memory tier drops them. */
  private readonly pending = new Map<string, Buffer>()
  /** Deletions of torn block files still under way: a rewrite of the same block waits for them. */
  private readonly removals = new Map<string, Promise<void>>()
  private readonly inflight = new Map<string, InFlightBlock>()
  private readonly blobs = new Map<string, BlobState>()
  private readonly corrupt = new Set<string>()
  private readonly background = new Set<Promise<void>>()
  private diskUsed = 0
  private accessSeq = 0
  private evicting = false
  private warnedOverLimit = false
  private phase: 'new' | 'open' | 'closed' = 'new'

  constructor(o: BlockCacheOptions) {
    this.dir = o.dir
    this.blockSize = positiveInt(o.blockSize ?? DEFAULT_BLOCK_SIZE, 'blockSize')
    this.maxFetchBytes = positiveInt(o.maxFetchBytes ?? MAX_FETCH_BYTES, 'maxFetchBytes')
    this.maxDiskBytes = o.maxDiskBytes ?? Infinity
    this.log = o.log ?? silentLogger()
    this.observer = o.observer ?? {}
    const memoryBytes = o.memoryBytes ?? DEFAULT_MEMORY_BYTES
    if (memoryBytes > 0) {
      this.memory = new LRUCache<string, Buffer>({ maxSize: Math.floor(memoryBytes), sizeCalculation: (b) => Math.max(1, b.length) })
    }
  }

  /** Creates the directory, checks its block size, loads the presence index and removes crash leftovers. */
  async init(): Promise<void> {
    if (this.phase !== 'new') return
    await mkdir(this.dir, { recursive: true })
    await this.checkBlockSize()
    const scanned = await scanStore(this.dir, this.blockSize, this.log)
    scanned.sort((a, b) => a.mtimeMs - b.mtimeMs)
    for (const s of scanned) this.adoptScanned(s)
    this.phase = 'open'
    this.maybeEvict() // the limit may be lower than the last run's
  }

  /**
   * Returns the blocks [first, last] of a blob, fetching missing ones with `fetch`: one ranged GET per run of
   * consecutive missing blocks, split into parts of at most `maxFetchBytes` fetched in parallel. Rejects
   * with DeadlineError as soon as `signal` fires, CorruptBlobError if the blob failed verification.
   */
  getBlocks(blob: BlobRef, first: number, last: number, fetch: BlobRangeFetcher, signal: AbortSignal): Promise<Buffer[]> {
    let state: BlobState
    try {
      this.assertOpen()
      state = this.stateFor(blob)
      this.assertRange(state, first, last)
      this.assertNotCorrupt(state)
    } catch (err) {
      return Promise.reject(err)
    }
    const deadline = (): Error => new DeadlineError(`read of blob ${blob.digest} blocks ${first}-${last}: deadline exceeded`)
    if (signal.aborted) return Promise.reject(deadline())
    state.pins++
    this.touch(state)
    const work = this.collect(state, blob, first, last, fetch, signal)
      .finally(() => { state.pins--; this.maybeEvict() })
    return raceSignal(work, signal, deadline)
  }

  /**
   * Starts fetching the blocks of [first, last] that are neither present nor already being fetched, in
   * block order, stopping before the total would exceed `maxBytes`. Present blocks are not read.
   */
  prefetch(blob: BlobRef, first: number, last: number, fetch: BlobRangeFetcher, signal: AbortSignal, maxBytes = Infinity): PrefetchStarted {
    const none: PrefetchStarted = { bytes: 0, done: Promise.resolve() }
    if (this.phase !== 'open' || signal.aborted) return none
    let state: BlobState
    try {
      state = this.stateFor(blob)
    } catch {
      return none
    }
    if (this.corrupt.has(state.digest)) return none
    const { blocks, bytes } = this.absentBlocks(state, Math.max(0, first), Math.min(last, this.blockCount(blob.size) - 1), maxBytes)
    if (!blocks.length) return none
    this.touch(state)
    const parts = this.startFetches(state, blob, blocks, fetch)
    return { bytes, done: Promise.all(parts.map((p) => p.fetch.join(signal))).then(() => undefined) }
  }

  /** Whether the block is present in memory or on disk. */
  has(blob: BlobRef, block: number): boolean {
    const state = this.peekState(blob)
    return state !== undefined && this.hasBlock(state, block)
  }

  /** Bytes of blob range [start, end) present in memory or on disk. */
  cachedBytes(blob: BlobRef, start: number, end: number): number {
    const state = this.peekState(blob)
    start = Math.max(0, start)
    end = Math.min(end, blob.size)
    if (!state || end <= start) return 0
    let total = 0
    for (let n = Math.floor(start / this.blockSize); n * this.blockSize < end; n++) {
      if (!this.hasBlock(state, n)) continue
      total += Math.min(end, (n + 1) * this.blockSize) - Math.max(start, n * this.blockSize)
    }
    return total
  }

  /** Every block of the blob is on disk or being written there. */
  blobComplete(blob: BlobRef): boolean {
    const state = this.peekState(blob)
    return state !== undefined && this.isComplete(state)
  }

  /** Evicts least recently used, unpinned blobs until the disk store holds at most `maxBytes`. */
  async prune(maxBytes: number): Promise<{ removedBytes: number; removedBlobs: number }> {
    this.assertOpen()
    await this.flush()
    return this.evictTo(Math.max(0, maxBytes))
  }

  /** Removes every block of a blob (memory and disk) and forgets that it was corrupt, so it can be fetched again. */
  async removeBlob(digest: string): Promise<void> {
    const hex = digestHex(digest)
    this.corrupt.delete(`sha256:${hex}`)
    const state = this.blobs.get(hex)
    if (!state) {
      await removeBlobDir(this.dir, hex) // another process may have written it
      return
    }
    await this.settleWrites(state)
    await this.dropBlob(state)
  }

  diskBytes(): number {
    return this.diskUsed
  }

  /** Blobs with blocks on disk, most recently used first. */
  async listBlobs(): Promise<CachedBlobInfo[]> {
    const out: CachedBlobInfo[] = []
    for (const s of this.blobs.values()) {
      if (!s.disk.size) continue
      const complete = s.size === undefined ? undefined : s.disk.size === this.blockCount(s.size)
      out.push({ digest: s.digest, bytes: s.diskBytes, blocks: s.disk.size, complete, lastAccess: new Date(s.lastAccess) })
    }
    return out.sort((a, b) => b.lastAccess.getTime() - a.lastAccess.getTime())
  }

  /**
   * Re-hashes a complete blob from its disk blocks. True if it matches (and marks it complete); false if not,
   * in which case its blocks are removed so they are fetched again. Throws if the blob is not complete on disk.
   */
  async verifyBlob(blob: BlobRef): Promise<boolean> {
    const state = this.stateFor(blob)
    await this.settleWrites(state)
    const incomplete = (): CnaifsError => new CnaifsError('EINCOMPLETE', `blob ${state.digest} is not completely cached on disk`)
    if (state.disk.size !== this.blockCount(blob.size)) throw incomplete()
    state.pins++
    try {
      const actual = await this.hashBlob(state, false)
      if (actual === undefined) throw incomplete()
      if (actual === state.digest) {
        state.verified = true
        await this.writeMarker(state)
        return true
      }
      this.log.warn({ digest: state.digest, actual }, `cached blob ${state.digest} is damaged on disk; removing it`)
      await this.dropBlob(state)
      return false
    } finally {
      state.pins--
    }
  }

  /** Waits for disk writes, marker writes and evictions in progress. */
  async flush(): Promise<void> {
    while (this.background.size) await Promise.all([...this.background])
  }

  /** Abandons fetches in progress (their readers reject) and waits for every disk write. */
  async close(): Promise<void> {
    if (this.phase === 'closed') return
    this.phase = 'closed'
    const fetches = new Set([...this.inflight.values()].map((e) => e.fetch))
    for (const f of fetches) f.abandon('the block cache is closing')
    await this.flush()
  }

  // ---------------------------------------------------------------------------------------------------------
  // Reads

  private async collect(state: BlobState, blob: BlobRef, first: number, last: number, fetch: BlobRangeFetcher, signal: AbortSignal): Promise<Buffer[]> {
    const out = new Array<Buffer>(last - first + 1)
    const onDisk: number[] = []
    const missing: number[] = []
    for (let n = first; n <= last; n++) {
      const held = this.heldBlock(state, n)
      if (held) {
        out[n - first] = held
        this.observer.onHit?.('memory', held.length)
      } else if (state.disk.has(n)) {
        onDisk.push(n)
      } else {
        missing.push(n)
      }
    }
    // Missing blocks are requested before any disk read is awaited, so concurrent readers see them in flight.
    const fetched = this.fetchInto(out, first, state, blob, missing, fetch, signal)
    const fromDisk = this.readInto(out, first, state, onDisk)
      .then((lost) => this.fetchInto(out, first, state, blob, lost, fetch, signal))
    await Promise.all([fetched, fromDisk])
    this.assertNotCorrupt(state)
    if (!state.verified && this.isComplete(state)) await this.ensureVerified(state)
    return out
  }

  /** Reads blocks from disk into `out`; returns the ones that turned out to be gone or damaged. */
  private async readInto(out: Buffer[], first: number, state: BlobState, blocks: number[]): Promise<number[]> {
    const lost: number[] = []
    await Promise.all(blocks.map(async (n) => {
      const data = await this.loadDiskBlock(state, n)
      if (!data) { lost.push(n); return }
      this.memory?.set(this.key(state, n), data)
      this.observer.onHit?.('disk', data.length)
      out[n - first] = data
    }))
    return lost.sort((a, b) => a - b)
  }

  /** Fills `out` with `blocks`, joining fetches in flight and starting fetches for the rest. */
  private fetchInto(out: Buffer[], first: number, state: BlobState, blob: BlobRef, blocks: number[], fetch: BlobRangeFetcher, signal: AbortSignal): Promise<void> {
    if (!blocks.length) return Promise.resolve()
    if (signal.aborted) return Promise.reject(new DeadlineError(`read of blob ${blob.digest}: deadline exceeded`))
    const waits: Promise<void>[] = []
    const toStart: number[] = []
    // Each fetch in flight is joined once per call, whatever number of our blocks it carries: every join
    // adds an abort listener to the caller's signal.
    const joined = new Map<SharedFetch<Buffer[]>, Array<{ n: number; index: number }>>()
    for (const n of blocks) {
      const held = this.heldBlock(state, n) // may have arrived while the disk was read
      if (held) { out[n - first] = held; continue }
      this.observer.onMiss?.(this.blockLength(blob.size, n))
      const entry = this.inflight.get(this.key(state, n))
      if (!entry) { toStart.push(n); continue }
      const slots = joined.get(entry.fetch) ?? []
      slots.push({ n, index: entry.index })
      joined.set(entry.fetch, slots)
    }
    for (const [shared, slots] of joined) {
      waits.push(shared.join(signal).then((bufs) => { for (const { n, index } of slots) out[n - first] = bufs[index] }))
    }
    for (const part of this.startFetches(state, blob, toStart, fetch)) {
      waits.push(part.fetch.join(signal).then((bufs) => bufs.forEach((b, i) => { out[part.first + i - first] = b })))
    }
    return Promise.all(waits).then(() => undefined)
  }

  /** A block from memory or from a pending disk write. */
  private heldBlock(state: BlobState, n: number): Buffer | undefined {
    const key = this.key(state, n)
    return this.memory?.get(key) ?? this.pending.get(key)
  }

  /** A block file's bytes; a missing or wrong-sized file is dropped from the index (and the disk). */
  private async loadDiskBlock(state: BlobState, n: number): Promise<Buffer | undefined> {
    if (state.size === undefined || !state.disk.has(n)) return undefined
    const generation = state.generation
    try {
      const data = await readBlockFile(join(state.dir, String(n)), this.blockLength(state.size, n))
      if (data) return data
    } catch (err) {
      this.log.warn({ digest: state.digest, block: n, error: errorMessage(err) }, 'block cache: cannot read block file; fetching it again')
    }
    if (generation === state.generation) this.dropDiskBlock(state, n)
    return undefined
  }

  // ---------------------------------------------------------------------------------------------------------
  // Fetches

  /** Blocks of [first, last] neither present nor in flight, in order, up to `maxBytes` in total. */
  private absentBlocks(state: BlobState, first: number, last: number, maxBytes: number): { blocks: number[]; bytes: number } {
    const blocks: number[] = []
    let bytes = 0
    for (let n = first; n <= last; n++) {
      if (this.hasBlock(state, n) || this.inflight.has(this.key(state, n))) continue
      const length = this.blockLength(state.size ?? 0, n)
      if (bytes + length > maxBytes) break
      blocks.push(n)
      bytes += length
    }
    return { blocks, bytes }
  }

  /** One fetch per part: runs of consecutive blocks, each cut into parts of at most maxFetchBytes. */
  private startFetches(state: BlobState, blob: BlobRef, blocks: number[], fetch: BlobRangeFetcher): StartedPart[] {
    const perPart = Math.max(1, Math.floor(this.maxFetchBytes / this.blockSize))
    const parts: StartedPart[] = []
    let i = 0
    while (i < blocks.length) {
      let j = i
      while (j + 1 < blocks.length && blocks[j + 1] === blocks[j] + 1 && j + 1 - i < perPart) j++
      parts.push({ first: blocks[i], fetch: this.startFetch(state, blob, blocks[i], blocks[j], fetch) })
      i = j + 1
    }
    return parts
  }

  private startFetch(state: BlobState, blob: BlobRef, first: number, last: number, fetch: BlobRangeFetcher): SharedFetch<Buffer[]> {
    const keys: string[] = []
    for (let n = first; n <= last; n++) keys.push(this.key(state, n))
    const shared: SharedFetch<Buffer[]> = new SharedFetch(
      (signal) => this.fetchPart(state, blob, first, last, fetch, signal),
      () => this.forget(keys, shared),
    )
    keys.forEach((key, index) => this.inflight.set(key, { fetch: shared, index }))
    state.pins++
    const settled = (): void => {
      state.pins--
      this.forget(keys, shared)
      this.maybeEvict()
    }
    shared.promise.then(settled, settled)
    return shared
  }

  private forget(keys: string[], shared: SharedFetch<Buffer[]>): void {
    for (const key of keys) if (this.inflight.get(key)?.fetch === shared) this.inflight.delete(key)
  }

  /** One ranged GET: store its blocks, and verify the blob if they complete it, before anyone sees them. */
  private async fetchPart(state: BlobState, blob: BlobRef, first: number, last: number, fetch: BlobRangeFetcher, signal: AbortSignal): Promise<Buffer[]> {
    const offset = first * this.blockSize
    const length = Math.min((last + 1) * this.blockSize, blob.size) - offset
    const started = performance.now()
    const data = await fetch(blob, offset, length, signal)
    // An abandoned fetch's late result is discarded: its readers are gone and newer fetches may own the blocks.
    if (signal.aborted) throw new DeadlineError(`fetch of blob ${blob.digest} range ${offset}+${length} abandoned`)
    if (data.length !== length) {
      throw new CnaifsError('EIO', `fetch of blob ${blob.digest} range ${offset}+${length} returned ${data.length} bytes`)
    }
    this.observer.onFetch?.(length, performance.now() - started)
    this.assertNotCorrupt(state)
    const blocks: Buffer[] = []
    for (let pos = 0; pos < length; pos += this.blockSize) blocks.push(data.subarray(pos, Math.min(pos + this.blockSize, length)))
    this.storeBlocks(state, first, blocks)
    if (!state.verified && this.isComplete(state)) await this.ensureVerified(state)
    return blocks
  }

  private storeBlocks(state: BlobState, first: number, blocks: Buffer[]): void {
    blocks.forEach((data, i) => {
      this.memory?.set(this.key(state, first + i), data)
      this.scheduleWrite(state, first + i, data)
    })
  }

  /** Writes a block to disk in the background; it stays readable from `pending` until the write ends. */
  private scheduleWrite(state: BlobState, n: number, data: Buffer): void {
    if (this.phase === 'closed') return
    this.pending.set(this.key(state, n), data)
    state.pendingWrites++
    const write = this.writeBlock(state, n, data)
    state.writes.add(write)
    void write.then(() => state.writes.delete(write))
    this.track(write)
  }

  private async writeBlock(state: BlobState, n: number, data: Buffer): Promise<void> {
    const generation = state.generation
    let written = false
    try {
      await this.removals.get(this.key(state, n)) // else a late unlink of the torn file could delete this block
      await writeFileAtomic(state.dir, String(n), data)
      written = true
    } catch (err) {
      this.log.warn({ digest: state.digest, block: n, error: errorMessage(err) }, 'block cache: cannot write block to disk; it is kept in memory only')
    }
    // Both counters change together so `disk.size + pendingWrites` never counts a block twice.
    this.pending.delete(this.key(state, n))
    state.pendingWrites--
    if (written && generation === state.generation) this.addDiskBlock(state, n, data.length)
    this.maybeEvict()
  }

  // ---------------------------------------------------------------------------------------------------------
  // Integrity

  private ensureVerified(state: BlobState): Promise<void> {
    if (state.verified) return Promise.resolve()
    state.verifying ??= this.verify(state).finally(() => { state.verifying = undefined })
    return state.verifying
  }

  private async verify(state: BlobState): Promise<void> {
    const actual = await this.hashBlob(state, true)
    if (actual === undefined) return // a block vanished meanwhile: verified when the blob completes again
    if (actual === state.digest) {
      state.verified = true
      this.track(this.writeMarker(state))
      return
    }
    await this.quarantine(state, actual)
    throw new CorruptBlobError(state.digest)
  }

  /** sha256 of the blob's blocks in order, or undefined if one is missing. */
  private async hashBlob(state: BlobState, useMemory: boolean): Promise<string | undefined> {
    const hash = createHash('sha256')
    const count = this.blockCount(state.size ?? 0)
    for (let n = 0; n < count; n++) {
      const key = this.key(state, n)
      const held = useMemory ? this.memory?.peek(key) ?? this.pending.get(key) : undefined
      const data = held ?? await this.loadDiskBlock(state, n)
      if (!data) return undefined
      hash.update(data)
    }
    return `sha256:${hash.digest('hex')}`
  }

  private async quarantine(state: BlobState, actual: string): Promise<void> {
    this.corrupt.add(state.digest)
    this.observer.onCorruptBlob?.(state.digest)
    this.log.error({ digest: state.digest, actual },
      `blob ${state.digest} is corrupt: the registry served bytes hashing to ${actual}; dropped from the cache, reads of it fail`)
    await this.settleWrites(state)
    try {
      await this.dropBlob(state)
    } catch (err) {
      this.log.warn({ digest: state.digest, error: errorMessage(err) }, 'block cache: cannot delete corrupt blob from disk')
    }
  }

  /** Marks a verified blob complete on disk once all its writes have landed, so restarts do not re-hash it. */
  private async writeMarker(state: BlobState): Promise<void> {
    const generation = state.generation
    await this.settleWrites(state)
    if (generation !== state.generation || !state.verified || state.size === undefined) return
    if (state.disk.size !== this.blockCount(state.size)) return // a write failed: no marker, re-hash next time
    try {
      await writeFileAtomic(state.dir, COMPLETE_MARKER, `${state.size}\n`)
    } catch (err) {
      if (!isNotFound(err)) this.log.warn({ digest: state.digest, error: errorMessage(err) }, 'block cache: cannot write complete marker')
    }
  }

  private assertNotCorrupt(state: BlobState): void {
    if (this.corrupt.has(state.digest)) throw new CorruptBlobError(state.digest)
  }

  // ---------------------------------------------------------------------------------------------------------
  // Eviction

  private maybeEvict(): void {
    if (this.diskUsed <= this.maxDiskBytes || this.evicting || this.phase !== 'open') return
    this.evicting = true
    this.track(this.evictTo(this.maxDiskBytes).then(() => undefined).finally(() => { this.evicting = false }))
  }

  private async evictTo(limit: number): Promise<{ removedBytes: number; removedBlobs: number }> {
    let removedBytes = 0
    let removedBlobs = 0
    while (this.diskUsed > limit) {
      const victim = this.leastRecentlyUsed()
      if (!victim) {
        this.warnOverLimit(limit)
        break
      }
      const bytes = victim.diskBytes
      try {
        await this.dropBlob(victim)
      } catch (err) {
        this.log.warn({ digest: victim.digest, error: errorMessage(err) }, 'block cache: cannot delete evicted blob from disk')
      }
      removedBytes += bytes
      removedBlobs++
      this.observer.onEvict?.(bytes)
      this.log.debug({ digest: victim.digest, bytes }, 'block cache: evicted blob')
    }
    if (this.diskUsed <= limit) this.warnedOverLimit = false
    return { removedBytes, removedBlobs }
  }

  private leastRecentlyUsed(): BlobState | undefined {
    let victim: BlobState | undefined
    for (const s of this.blobs.values()) {
      if (!s.diskBytes || s.pins || s.pendingWrites || s.verifying) continue
      if (!victim || s.accessOrder < victim.accessOrder) victim = s
    }
    return victim
  }

  private warnOverLimit(limit: number): void {
    if (this.warnedOverLimit) return
    this.warnedOverLimit = true
    this.log.warn({ diskBytes: this.diskUsed, limit }, 'block cache is over its size limit, but every remaining blob is in use; it will shrink when they are released')
  }

  /** Forgets every block of the blob at once (memory, index), then deletes its directory. Returns disk bytes freed. */
  private async dropBlob(state: BlobState): Promise<number> {
    const bytes = state.diskBytes
    state.generation++
    state.disk.clear()
    state.diskBytes = 0
    this.diskUsed -= bytes
    state.verified = false
    this.dropMemory(state)
    await removeBlobDir(this.dir, state.hex)
    return bytes
  }

  private dropMemory(state: BlobState): void {
    if (!this.memory) return
    const prefix = `${state.hex}/`
    for (const key of [...this.memory.keys()]) if (key.startsWith(prefix)) this.memory.delete(key)
  }

  // ---------------------------------------------------------------------------------------------------------
  // Index

  private async checkBlockSize(): Promise<void> {
    let recorded: string | undefined
    try {
      recorded = (await readFile(join(this.dir, BLOCK_SIZE_FILE), 'utf8')).trim()
    } catch (err) {
      if (!isNotFound(err)) throw err
    }
    if (recorded === undefined) {
      await writeFileAtomic(this.dir, BLOCK_SIZE_FILE, `${this.blockSize}\n`)
    } else if (Number(recorded) !== this.blockSize) {
      throw new UsageError(`block cache ${this.dir} holds ${recorded}-byte blocks, not ${this.blockSize}: use the same block size or another cache directory`)
    }
  }

  private adoptScanned(s: ScannedBlob): void {
    const state = this.newState(s.hex, s.mtimeMs)
    state.accessOrder = ++this.accessSeq
    for (const [n, length] of s.blocks) this.addDiskBlock(state, n, length)
    if (s.markerSize === undefined) return
    this.adoptSize(state, s.markerSize)
    if (this.isComplete(state)) state.verified = true
    else this.track(unlink(join(state.dir, COMPLETE_MARKER)).catch(() => undefined))
  }

  private newState(hex: string, now: number): BlobState {
    const state = new BlobState(`sha256:${hex}`, hex, blobDirOf(this.dir, hex), now)
    this.blobs.set(hex, state)
    return state
  }

  /** The blob's state, learning its size; throws on a malformed ref. */
  private stateFor(blob: BlobRef): BlobState {
    if (!Number.isSafeInteger(blob.size) || blob.size < 0) throw new FormatError(`blob ${blob.digest}: bad size ${blob.size}`)
    const hex = digestHex(blob.digest)
    const state = this.blobs.get(hex) ?? this.newState(hex, Date.now())
    if (!this.adoptSize(state, blob.size)) {
      throw new FormatError(`blob ${blob.digest}: size ${blob.size} conflicts with size ${state.size} seen before`)
    }
    return state
  }

  private peekState(blob: BlobRef): BlobState | undefined {
    try {
      return this.stateFor(blob)
    } catch {
      return undefined
    }
  }

  /**
   * Records the blob's size the first time it is known, and drops block files whose size does not match it
   * (init cannot tell a short last block from a damaged one before the size is known).
   */
  private adoptSize(state: BlobState, size: number): boolean {
    if (state.size !== undefined) return state.size === size
    state.size = size
    for (const [n, length] of state.disk) {
      if (length === this.blockLength(size, n)) continue
      this.dropDiskBlock(state, n)
      const key = this.key(state, n)
      const removal = unlink(join(state.dir, String(n))).catch(() => undefined).finally(() => this.removals.delete(key))
      this.removals.set(key, removal)
      this.track(removal)
    }
    return true
  }

  private addDiskBlock(state: BlobState, n: number, length: number): void {
    const delta = length - (state.disk.get(n) ?? 0)
    state.disk.set(n, length)
    state.diskBytes += delta
    this.diskUsed += delta
  }

  private dropDiskBlock(state: BlobState, n: number): void {
    const length = state.disk.get(n)
    if (length === undefined) return
    state.disk.delete(n)
    state.diskBytes -= length
    this.diskUsed -= length
  }

  private hasBlock(state: BlobState, n: number): boolean {
    if (state.disk.has(n)) return true
    const key = this.key(state, n)
    return this.pending.has(key) || (this.memory?.has(key) ?? false)
  }

  private isComplete(state: BlobState): boolean {
    return state.size !== undefined && state.disk.size + state.pendingWrites >= this.blockCount(state.size)
  }

  private touch(state: BlobState): void {
    const now = Date.now()
    state.lastAccess = now
    state.accessOrder = ++this.accessSeq
    if (now - state.lastTouch < TOUCH_INTERVAL_MS || !state.disk.size) return
    state.lastTouch = now
    this.track(utimes(state.dir, now / 1000, now / 1000).catch(() => undefined))
  }

  private async settleWrites(state: BlobState): Promise<void> {
    while (state.writes.size) await Promise.all([...state.writes])
  }

  /** Keeps a background task visible to flush()/close(); its failure is logged, never unhandled. */
  private track(task: Promise<void>): void {
    const settled = task.catch((err: unknown) => {
      this.log.warn({ error: errorMessage(err) }, 'block cache: background task failed')
    })
    this.background.add(settled)
    void settled.then(() => this.background.delete(settled))
  }

  private assertOpen(): void {
    if (this.phase === 'new') throw new CnaifsError('EINVAL', 'BlockCache.init() must complete before the cache is used')
    if (this.phase === 'closed') throw new CnaifsError('ECLOSED', 'the block cache is closed')
  }

  private assertRange(state: BlobState, first: number, last: number): void {
    const count = this.blockCount(state.size ?? 0)
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last) || first < 0 || first > last || last >= count) {
      throw new CnaifsError('EINVAL', `blocks ${first}-${last} are outside blob ${state.digest} (${count} blocks)`)
    }
  }

  private key(state: BlobState, n: number): string {
    return `${state.hex}/${n}`
  }

  private blockCount(size: number): number {
    return Math.ceil(size / this.blockSize)
  }

  private blockLength(size: number, n: number): number {
    return Math.max(0, Math.min(this.blockSize, size - n * this.blockSize))
  }
}

function positiveInt(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value <= 0) throw new CnaifsError('EINVAL', `${name} must be a positive integer, got ${value}`)
  return value
}
