/**
 * One blob in the cache, in this process: its block map, the fd of its data file (which FUSE replies read
 * from), single-flight fetches of its missing blocks, checks of blocks found on disk, and its verification.
 * The cache (blob-cache.ts) owns these and provides what they share (workers, memory tier, durability).
 */
import { open, type FileHandle } from 'node:fs/promises'
import { constants } from 'node:fs'
import { setMaxListeners } from 'node:events'
import { DeadlineError } from '../registry/errors.js'
import { CnaifsError, errorMessage } from '../util/errors.js'
import type { Logger } from '../util/log.js'
import { BlockFetcher, type PartEvents, type StartedPart } from './block-fetcher.js'
import { BlockMap, BlockState, MapMismatchError } from './block-map.js'
import { BlobVerifier } from './blob-verifier.js'
import type { BlobPaths, BlobStore } from './blob-store.js'
import { FILE_MODE } from './blob-store.js'
import type { FetchPool, LandedHandler, RunningJob } from './fetch-pool.js'
import type { MemoryTier } from './memory-tier.js'
import type { BlobRef, BlobSource } from './types.js'
import type { FetchPurpose } from './worker-protocol.js'

/** How many times a read looks again at blocks that vanished or failed a check while it waited. */
const MAX_ROUNDS = 4
/** Blocks per check job. */
const CHECK_BATCH = 8

/** The registry served bytes that do not hash to the blob's digest. */
export class CorruptBlobError extends CnaifsError {
  constructor(readonly digest: string, detail = 'the bytes the registry served do not hash to its digest') {
    super('ECORRUPT', `blob ${digest} is corrupt: ${detail}`)
  }
}

export interface EnsureOptions {
  /** The blob range a read needs, within its blocks (see ensure()). */
  bytes?: { start: number; stop: number }
  /** Why the blocks are fetched: prefetch requests say so to Dragonfly hosts. Default 'read'. */
  purpose?: FetchPurpose
}

/** What every blob of a cache shares. */
export interface BlobDeps {
  store: BlobStore
  pool: FetchPool
  memory: MemoryTier
  log: Logger
  blockSize: number
  fetchPartBlocks: number
  /** Check jobs running across the cache, and how many prefetch may add to. */
  checks: { running: number; max: number }
  /** Its map has slots to write. */
  scheduleDurability(blob: CachedBlob): void
  /** Bytes of blocks added to (positive) or removed from the data file. */
  diskChanged(bytes: number): void
  /** A fetch or check of the blob ended (the blob may now be evictable). */
  workEnded(blob: CachedBlob): void
  /** The blob failed verification: drop it and fail its readers. */
  quarantine(blob: CachedBlob, detail: string): void
  /** A block was fetched (bytes) or found on disk (checked). */
  onFetchedBlock?(bytes: number): void
  onCheckedBlock?(ok: boolean): void
  /** The blob's verification finished. */
  onVerified?(blob: CachedBlob): void
}

export class CachedBlob {
  readonly paths: BlobPaths
  map?: BlockMap
  private file?: FileHandle
  private loading?: Promise<void>
  private readonly fetcher: BlockFetcher
  private verifier?: BlobVerifier
  private readonly checks = new Map<number, Promise<void>>()
  /** Data files closed while leases were held (see close()). */
  private readonly retired: FileHandle[] = []
  private source?: BlobSource
  /** Readers holding the blob open; while > 0 (or work is in flight) it is never evicted. */
  leases = 0
  persisting = false
  corrupt = false
  lastUseMs = Date.now()
  /** Bytes of the data file counted by the cache (what the start-up scan found, then the map's). */
  diskBytes: number

  constructor(readonly ref: BlobRef, readonly hex: string, private readonly deps: BlobDeps, scannedBytes = 0) {
    this.paths = deps.store.paths(hex)
    this.diskBytes = scannedBytes
    this.fetcher = new BlockFetcher(ref.digest, deps.blockSize, (first, last, purpose, events) => {
      const job = this.startPart(first, last, purpose, events)
      // After the fetcher's own handler, so the part no longer counts as running.
      job.done.finally(() => setImmediate(() => this.deps.workEnded(this))).catch(() => undefined)
      return job
    })
    this.fetcher.onWhole = (part) => {
      const map = this.map
      if (!map) return
      const absent: number[] = []
      for (let n = 0; n < map.blockCount; n++) if (map.state(n) === BlockState.Absent && !this.deps.memory.has(this.hex, n)) absent.push(n)
      this.fetcher.adoptWhole(part, absent)
    }
  }

  get loaded(): boolean {
    return this.map !== undefined && this.file !== undefined
  }

  /** The data file's fd (valid once loaded, until the blob is closed). */
  get fd(): number {
    if (!this.file) throw new CnaifsError('EINVAL', `blob ${this.ref.digest} is not open`)
    return this.file.fd
  }

  get blockCount(): number {
    return Math.ceil(this.ref.size / this.deps.blockSize)
  }

  /** Work in flight or readers: the blob must stay. */
  get pinned(): boolean {
    return this.leases > 0 || this.fetcher.active > 0 || this.checks.size > 0 || this.persisting || this.loading !== undefined
  }

  /** The most recent source given wins: any of them serves the same content-addressed bytes. */
  useSource(source: BlobSource): void {
    this.source = source
  }

  /** Opens the map (creating it) and the data file. */
  load(): Promise<void> {
    if (this.loaded) return Promise.resolve()
    // A blob that failed verification stays gone for this process: nothing may recreate its files.
    if (this.corrupt) return Promise.reject(new CorruptBlobError(this.ref.digest))
    this.loading ??= this.loadNow().finally(() => { this.loading = undefined })
    return this.loading
  }

  private async loadNow(): Promise<void> {
    await this.deps.store.prepare(this.hex)
    let map: BlockMap
    try {
      map = await BlockMap.open(this.paths.map, this.ref, this.deps.blockSize)
    } catch (err) {
      if (!(err instanceof MapMismatchError)) throw err
      this.deps.log.warn({ digest: this.ref.digest, error: err.message }, 'blob cache: discarding a blob map that does not match')
      await this.deps.store.remove(this.hex)
      map = await BlockMap.open(this.paths.map, this.ref, this.deps.blockSize)
    }
    const file = await open(this.paths.data, constants.O_RDWR | constants.O_CREAT, FILE_MODE)
    this.map = map
    this.file = file
    const bytes = map.presentBytes()
    this.deps.diskChanged(bytes - this.diskBytes)
    this.diskBytes = bytes
    this.verifier = new BlobVerifier(this.ref.digest, this.paths.data, map, {
      prefix: (digest, path, size, to) => this.deps.pool.prefix(digest, path, size, to),
      reset: (digest, path) => this.deps.pool.forget(path, digest),
    }, (outcome) => this.verified(outcome), (err) => {
      this.deps.log.warn({ digest: this.ref.digest, error: errorMessage(err) }, 'blob cache: cannot hash blob for verification')
    })
    if (map.complete && !map.verified) this.verifier.advance()
  }

  /** Whether blocks [first, last] can be served from the data file right now (no check, no fetch). */
  readyOnDisk(first: number, last: number): boolean {
    const map = this.map
    if (!map || this.corrupt) return false
    if (map.verified) return map.ready === map.blockCount || this.allReady(map, first, last)
    // A complete blob not yet verified, and the end of any unverified blob, go through ensure(), which waits
    // for the verification (see there).
    if (map.complete || last === map.blockCount - 1) return false
    return this.allReady(map, first, last)
  }

  private allReady(map: BlockMap, first: number, last: number): boolean {
    for (let n = first; n <= last; n++) if (map.state(n) !== BlockState.Ready) return false
    return true
  }

  /** Whether block `n` is held in memory only (the disk refused it). */
  inMemory(n: number): boolean {
    return this.map?.state(n) !== BlockState.Ready && this.deps.memory.has(this.hex, n)
  }

  memoryBlock(n: number): Buffer | undefined {
    return this.deps.memory.get(this.hex, n)
  }

  /**
   * Waits until blocks [first, last] can be served (Ready on disk, or in memory), fetching the missing ones
   * and checking the ones found on disk. Rejects with DeadlineError when `signal` fires, CorruptBlobError if
   * the blob failed verification, or the fetch's own error.
   */
  /**
   * With `bytes` (the blob range a read needs, within blocks first..last) a block being fetched counts as
   * soon as the bytes the read needs of it are in the data file, before the whole block has arrived: a 4 KiB
   * random read then waits for its 4 KiB, not for the 1 MiB block (see earlyUntil for the exception).
   */
  ensure(first: number, last: number, signal: AbortSignal, opts: EnsureOptions = {}): Promise<void> {
    try {
      this.assertUsable()
    } catch (err) {
      return Promise.reject(err)
    }
    // When loaded, the first round below runs before this returns: the read's missing blocks are claimed
    // (fetches started) before the caller starts any read-ahead, so read-ahead never fetches them twice.
    if (this.loaded) return this.ensureLoaded(first, last, signal, opts)
    return raceSignal(this.load(), signal, () => this.deadline(first, last)).then(() => this.ensureLoaded(first, last, signal, opts))
  }

  private async ensureLoaded(first: number, last: number, signal: AbortSignal, { bytes, purpose = 'read' }: EnsureOptions): Promise<void> {
    const map = this.map as BlockMap
    // Waiters leave their parts as soon as this read gives up, whatever the reason.
    const local = new AbortController()
    // One listener per block this call waits on (a read-ahead part has up to 64): not a leak.
    setMaxListeners(0, local.signal)
    const onAbort = (): void => local.abort()
    signal.addEventListener('abort', onAbort, { once: true })
    let settledTail = false
    try {
      for (let round = 0; ; round++) {
        this.assertUsable()
        const waits: Promise<void>[] = []
        const missing: number[] = []
        const unchecked: number[] = []
        for (let n = first; n <= last; n++) {
          const state = map.state(n)
          if (state === BlockState.Ready) continue
          if (state === BlockState.OnDisk) { unchecked.push(n); continue }
          if (this.deps.memory.has(this.hex, n)) continue
          const until = this.earlyUntil(n, bytes)
          if (this.fetcher.isInFlight(n)) {
            const reached = this.fetcher.reachedFor(n)
            if (until !== undefined && reached !== undefined && reached >= until) continue
            waits.push(this.fetcher.waitFor(n, local.signal, until))
          } else {
            missing.push(n)
          }
        }
        if (!waits.length && !missing.length && !unchecked.length) {
          if (last === map.blockCount - 1 && !settledTail) {
            // The end of a blob: a reader reading it through sees a corrupt blob fail here, not only later
            // readers. Let the blocks still arriving land first (whether their fetches succeed is not this
            // read's business), then, if that made the blob complete, wait for its verification below.
            settledTail = true
            const arriving: Promise<unknown>[] = []
            for (let n = 0; n < last; n++) if (this.fetcher.isInFlight(n)) arriving.push(this.fetcher.waitFor(n, local.signal).catch(() => undefined))
            if (arriving.length) {
              await Promise.all(arriving)
              if (signal.aborted) throw this.deadline(first, last)
              continue
            }
          }
          if (!this.awaitingVerification()) return
          waits.push(raceSignal(this.verifier!.settled(), local.signal, () => this.deadline(first, last)))
        } else if (round >= MAX_ROUNDS) {
          throw new CnaifsError('EIO', `blob ${this.ref.digest} blocks ${first}-${last} could not be read after ${round} attempts`)
        }
        if (missing.length) {
          this.startFetch(missing, purpose)
          for (const n of missing) {
            waits.push(this.fetcher.waitFor(n, local.signal, this.earlyUntil(n, bytes)))
          }
        }
        if (unchecked.length) waits.push(raceSignal(this.check(unchecked), local.signal, () => this.deadline(first, last)))
        await Promise.all(waits)
        if (this.map !== map) throw new CorruptBlobError(this.ref.digest)
      }
    } catch (err) {
      if (signal.aborted) throw this.deadline(first, last)
      throw err
    } finally {
      signal.removeEventListener('abort', onAbort)
      local.abort()
    }
  }

  /**
   * Starts fetching the absent blocks of [first, last] that nobody fetches yet, in block order, up to
   * `maxBytes`, and checks blocks found on disk (warm read-ahead). Each part is kept alive until `signal`
   * fires. Returns the bytes it started fetching and when those parts are over.
   */
  prefetch(first: number, last: number, maxBytes: number, signal: AbortSignal): { bytes: number; done: Promise<void> } {
    const none = { bytes: 0, done: Promise.resolve() }
    const map = this.map
    if (!map || this.corrupt || signal.aborted) return none
    last = Math.min(last, map.blockCount - 1)
    const absent: number[] = []
    const unchecked: number[] = []
    let bytes = 0
    for (let n = Math.max(0, first); n <= last; n++) {
      const state = map.state(n)
      if (state === BlockState.OnDisk) {
        if (!this.checks.has(n)) unchecked.push(n)
        continue
      }
      if (state !== BlockState.Absent || this.fetcher.isInFlight(n) || this.deps.memory.has(this.hex, n)) continue
      const length = map.blockLength(n)
      if (bytes + length > maxBytes) break
      absent.push(n)
      bytes += length
    }
    if (unchecked.length && this.deps.checks.running < this.deps.checks.max) void this.check(unchecked).catch(() => undefined)
    if (!absent.length) return none
    const parts = this.startFetch(absent, 'prefetch')
    for (const p of parts) this.fetcher.hold(p.first, signal)
    return { bytes, done: Promise.all(parts.map((p) => p.settled)).then(() => undefined) }
  }

  /** Bytes of blob range [start, end) present in the data file or in memory. */
  cachedBytes(start: number, end: number): number {
    const map = this.map
    start = Math.max(0, start)
    end = Math.min(end, this.ref.size)
    if (end <= start) return 0
    if (!map) return 0
    const B = this.deps.blockSize
    if (map.complete) return end - start
    let total = 0
    for (let n = Math.floor(start / B); n * B < end; n++) {
      if (map.state(n) === BlockState.Absent && !this.deps.memory.has(this.hex, n)) continue
      total += Math.min(end, (n + 1) * B) - Math.max(start, n * B)
    }
    return total
  }

  /** Writes the map's waiting slots after syncing the data file (see block-map.ts). */
  async persist(): Promise<void> {
    const map = this.map
    const file = this.file
    if (!map || !file || this.persisting || !map.pendingSlots) return
    this.persisting = true
    try {
      await map.persist(() => file.datasync())
    } finally {
      this.persisting = false
    }
  }

  /** Fails readers and stops fetches (quarantine or shutdown). */
  failAll(err: Error): void {
    this.fetcher.failAll(err)
  }

  /**
   * Closes the map and data file (after a last persist); the blob can be loaded again. While readers hold
   * leases the data file stays open (a FUSE reply may still be reading a range of it: its fd number must not
   * be reused for another file), and is closed when the last lease is released.
   */
  async close(): Promise<void> {
    const map = this.map
    const file = this.file
    this.map = undefined
    this.file = undefined
    this.verifier = undefined
    if (map) {
      if (file) await map.persist(() => file.datasync()).catch(() => undefined)
      await map.sync().catch(() => undefined)
      await map.close()
    }
    if (!file) return
    if (this.leases > 0) this.retired.push(file)
    else await file.close()
  }

  /** A lease was released: data files closed while it was held are closed now. */
  released(): void {
    if (this.leases > 0 || !this.retired.length) return
    for (const f of this.retired.splice(0)) void f.close().catch(() => undefined)
  }

  /** Forgets the files' contents (after they were removed): the blob starts empty if used again. */
  reset(): void {
    this.map = undefined
    this.file = undefined
    this.verifier = undefined
    this.diskBytes = 0
  }

  /**
   * Up to where block `n`'s part must have written for a read of `bytes` to be answered before the block is
   * complete; undefined when the read must wait for the block. Never for the last block of a blob: a read of
   * a blob's end waits for it (and for the blob's verification once complete; a blob of one block, in
   * particular, is never served unverified).
   */
  private earlyUntil(n: number, bytes: EnsureOptions['bytes']): number | undefined {
    if (!bytes || n >= this.blockCount - 1) return undefined
    return Math.min(bytes.stop, (n + 1) * this.deps.blockSize)
  }

  private assertUsable(): void {
    if (this.corrupt) throw new CorruptBlobError(this.ref.digest)
  }

  private awaitingVerification(): boolean {
    const map = this.map
    return map !== undefined && map.complete && !map.verified
  }

  private startFetch(blocks: number[], purpose: FetchPurpose = 'read'): StartedPart[] {
    return this.fetcher.fetch(blocks, this.deps.fetchPartBlocks, purpose)
  }

  private startPart(first: number, last: number, purpose: FetchPurpose, events: PartEvents): RunningJob {
    const source = this.source
    if (!source) throw new CnaifsError('EINVAL', `blob ${this.ref.digest} has no source to fetch from`)
    const B = this.deps.blockSize
    const offset = first * B
    const length = Math.min((last + 1) * B, this.ref.size) - offset
    const onLanded: LandedHandler = (n, checksum, memory) => this.landed(n, checksum, memory)
    if (source.kind === 'registry') {
      return this.deps.pool.fetch({
        reference: source.reference, digest: this.ref.digest, blobSize: this.ref.size, offset, length, path: this.paths.data, purpose,
      }, onLanded, events.reached, events.whole)
    }
    const controller = new AbortController()
    const done = source.produce(offset, length, controller.signal).then((data) => {
      if (data.length !== length) throw new CnaifsError('EIO', `blob ${this.ref.digest} range ${offset}+${length}: produced ${data.length} bytes`)
      return this.deps.pool.store(this.paths.data, this.ref.size, offset, data, onLanded)
    })
    return { done, abort: () => controller.abort(new DeadlineError(`blob ${this.ref.digest} range ${offset}+${length} abandoned`)) }
  }

  private landed(n: number, checksum: number, memory?: Buffer): void {
    const map = this.map
    if (!map || this.corrupt) return
    if (memory) {
      this.deps.memory.set(this.hex, n, memory)
      this.fetcher.landed(n)
      return
    }
    const wasAbsent = map.state(n) === BlockState.Absent
    if (!map.landed(n, checksum)) {
      this.deps.quarantine(this, `block ${n} arrived with other bytes than the blob had when it was verified`)
      return
    }
    const bytes = map.blockLength(n)
    if (wasAbsent) {
      this.diskBytes += bytes
      this.deps.diskChanged(bytes)
    }
    this.deps.memory.delete(this.hex, n)
    this.deps.onFetchedBlock?.(bytes)
    this.fetcher.landed(n)
    this.deps.scheduleDurability(this)
    this.verifier?.advance()
  }

  /** Checks blocks found on disk against their recorded checksums (single flight per block). */
  private check(blocks: number[]): Promise<void> {
    const waits: Promise<void>[] = []
    const fresh: number[] = []
    for (const n of blocks) {
      const running = this.checks.get(n)
      if (running) waits.push(running)
      else fresh.push(n)
    }
    for (let i = 0; i < fresh.length; i += CHECK_BATCH) {
      const batch = fresh.slice(i, i + CHECK_BATCH)
      const job = this.checkBatch(batch).finally(() => {
        for (const n of batch) if (this.checks.get(n) === job) this.checks.delete(n)
        this.deps.workEnded(this)
      })
      for (const n of batch) this.checks.set(n, job)
      waits.push(job)
    }
    return Promise.all(waits).then(() => undefined)
  }

  private async checkBatch(blocks: number[]): Promise<void> {
    const map = this.map
    if (!map) return
    let ok: boolean[]
    this.deps.checks.running++
    try {
      ok = await this.deps.pool.check(this.paths.data, this.ref.size, blocks, blocks.map((n) => map.checksum(n)))
    } finally {
      this.deps.checks.running--
    }
    if (this.map !== map) return
    let dropped = 0
    blocks.forEach((n, i) => {
      if (map.state(n) !== BlockState.OnDisk) return
      this.deps.onCheckedBlock?.(ok[i]!)
      if (ok[i]) { map.checked(n); return }
      map.drop(n)
      this.verifier?.invalidate(n)
      const bytes = map.blockLength(n)
      this.diskBytes -= bytes
      this.deps.diskChanged(-bytes)
      dropped++
    })
    if (dropped) {
      this.deps.log.warn({ digest: this.ref.digest, blocks: dropped }, 'blob cache: blocks on disk did not match their checksums; fetching them again')
      this.deps.scheduleDurability(this)
    }
  }

  private verified(outcome: 'verified' | 'mismatch'): void {
    const map = this.map
    if (!map) return
    if (outcome === 'verified') {
      map.markVerified()
      for (let n = 0; n < map.blockCount; n++) map.checked(n)
      this.deps.scheduleDurability(this)
      this.deps.onVerified?.(this)
      return
    }
    // The data file does not hash to the digest. Blocks found on disk (from an earlier run) may be damaged:
    // check them all first; only bytes fetched or checked in this process make the blob corrupt.
    const unchecked: number[] = []
    for (let n = 0; n < map.blockCount; n++) if (map.state(n) === BlockState.OnDisk) unchecked.push(n)
    if (!unchecked.length) {
      this.deps.quarantine(this, 'the bytes the registry served do not hash to its digest')
      return
    }
    void this.check(unchecked).then(() => this.verifier?.advance(), () => undefined)
  }

  private deadline(first: number, last: number): DeadlineError {
    return new DeadlineError(`read of blob ${this.ref.digest} blocks ${first}-${last}: deadline exceeded`)
  }
}

/** Settles like `work`, or rejects with `onAbort()` when `signal` fires first (the work goes on). */
export function raceSignal<T>(work: Promise<T>, signal: AbortSignal, onAbort: () => Error): Promise<T> {
  if (signal.aborted) {
    work.catch(() => undefined)
    return Promise.reject(onAbort())
  }
  return new Promise<T>((resolve, reject) => {
    const abort = (): void => reject(onAbort())
    signal.addEventListener('abort', abort, { once: true })
    work.then(
      (value) => { signal.removeEventListener('abort', abort); resolve(value) },
      (err: unknown) => { signal.removeEventListener('abort', abort); reject(err) },
    )
  })
}
