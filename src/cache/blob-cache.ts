/**
 * The blob cache: one sparse data file per blob plus a persisted map of the blocks it holds (blob-store.ts,
 * block-map.ts), shared by every mount and model on the node; fetch workers that stream ranged GETs straight
 * into the data files (fetch-pool.ts); per-blob single-flight fetching, checking and verification
 * (cached-blob.ts); whole-blob LRU eviction (evictor.ts); durability of the maps (fdatasync, then slots).
 *
 * Decisions:
 * - The page cache of the data files is the memory tier: reads are answered as (fd, position, length) and
 *   never copied through JavaScript. Blocks live in memory (memory-tier.ts) only when the disk refused them.
 * - A block fetched in this process is served at once; a block found on disk is checked against its checksum
 *   first (once per process), so a damaged disk or another process's writes yield a re-fetch, never a wrong
 *   byte. A blob is verified against its digest by a running hash as its blocks arrive; a blob of one block
 *   (or any blob once complete) is not served before it is verified. Bytes of a bigger blob may be served
 *   before its last block arrives; a mismatch then fails every later read (the registry would serve the
 *   same bytes again) but cannot recall bytes already returned.
 * - Recency for eviction is the map file's mtime, bumped at most once a minute per blob, so it survives
 *   restarts and is shared by the daemons of a node. Pins (readers, fetches, checks) are per process.
 */
import { utimes } from 'node:fs/promises'
import type { RegistryClientConfig, RegistryObserver } from '../registry/client.js'
import { DEFAULTS } from '../util/defaults.js'
import { digestHex } from '../util/digest.js'
import { CnaifsError, FormatError, errorMessage } from '../util/errors.js'
import { silentLogger, type Logger } from '../util/log.js'
import { BlockState } from './block-map.js'
import { BlobStore, isHex } from './blob-store.js'
import { CachedBlob, CorruptBlobError, type BlobDeps } from './cached-blob.js'
import { chooseVictims } from './evictor.js'
import { FetchPool } from './fetch-pool.js'
import { MemoryTier } from './memory-tier.js'
import type { BlobRef, BlobSource } from './types.js'
import { WriteErrorReporter } from './write-errors.js'

export { CorruptBlobError }

export interface BlobCacheOptions {
  cacheDir: string
  /** How workers reach registries (the main client's `config`). */
  client: RegistryClientConfig
  blockSize?: number
  fetchPartBytes?: number
  maxDiskBytes?: number
  /** Bytes of blocks kept in memory when the disk refuses them. */
  memoryBytes?: number
  workers?: number
  log?: Logger
  observer?: BlobCacheObserver
}

export interface BlobCacheObserver {
  /** Bytes that arrived from a source and were stored. */
  onFetched?(bytes: number): void
  /** A block found on disk was checked: it matched (true) or was dropped (false). */
  onChecked?(ok: boolean): void
  onCorruptBlob?(digest: string): void
  onEvict?(bytes: number): void
  onWriteError?(): void
  /** Every registry response the workers saw. */
  registry?: RegistryObserver
}

export interface CachedBlobInfo {
  digest: string
  size?: number
  /** Bytes of the blob in its data file. */
  bytes: number
  complete?: boolean
  verified?: boolean
  lastAccess: Date
}

/** A reader's hold on a blob: while held it is never evicted. */
export interface BlobLease {
  readonly blob: CachedBlob
  release(): void
}

export class BlobCache {
  readonly blockSize: number
  readonly fetchPartBytes: number
  readonly memory: MemoryTier
  private readonly store: BlobStore
  private readonly log: Logger
  private readonly observer: BlobCacheObserver
  private readonly maxDiskBytes: number
  private readonly blobs = new Map<string, CachedBlob>()
  private readonly corrupt = new Set<string>()
  private readonly durable = new Set<CachedBlob>()
  private readonly writeErrors: WriteErrorReporter
  private pool?: FetchPool
  private deps?: BlobDeps
  private durabilityTimer?: NodeJS.Timeout
  private diskUsed = 0
  private evicting?: Promise<void>
  private phase: 'new' | 'open' | 'closed' = 'new'

  constructor(private readonly o: BlobCacheOptions) {
    this.blockSize = o.blockSize ?? DEFAULTS.cache.blockBytes
    this.fetchPartBytes = o.fetchPartBytes ?? DEFAULTS.cache.fetchPartBytes
    if (!Number.isSafeInteger(this.blockSize) || this.blockSize <= 0 || this.fetchPartBytes < this.blockSize) {
      throw new CnaifsError('EINVAL', `bad block size ${this.blockSize} or fetch part size ${this.fetchPartBytes}`)
    }
    this.maxDiskBytes = o.maxDiskBytes ?? Infinity
    this.log = o.log ?? silentLogger()
    this.observer = o.observer ?? {}
    this.memory = new MemoryTier(o.memoryBytes ?? DEFAULTS.read.memoryBudgetBytes / 2)
    this.store = new BlobStore(o.cacheDir, this.blockSize, this.log)
    this.writeErrors = new WriteErrorReporter(this.log, DEFAULTS.cache.writeErrorReportMs)
  }

  /** Prepares the store (private directories, layout, leftovers), learns what is cached and starts the workers. */
  async init(): Promise<void> {
    if (this.phase !== 'new') return
    const stored = await this.store.init(this.o.cacheDir)
    const pool = new FetchPool({
      workers: this.o.workers ?? DEFAULTS.fetch.workers,
      blockSize: this.blockSize,
      client: this.o.client,
      log: this.log,
      observer: this.observer.registry,
      onWriteError: (path, err) => this.writeFailed(path, err),
    })
    this.pool = pool
    this.deps = {
      store: this.store,
      pool,
      memory: this.memory,
      log: this.log,
      blockSize: this.blockSize,
      fetchPartBlocks: Math.max(1, Math.floor(this.fetchPartBytes / this.blockSize)),
      checks: { running: 0, max: DEFAULTS.cache.checkConcurrency },
      scheduleDurability: (blob) => this.scheduleDurability(blob),
      diskChanged: (bytes) => this.diskChanged(bytes),
      workEnded: (blob) => { if (!blob.pinned) this.maybeEvict() },
      quarantine: (blob, detail) => void this.quarantine(blob, detail),
      onFetchedBlock: (bytes) => this.observer.onFetched?.(bytes),
      onCheckedBlock: (ok) => this.observer.onChecked?.(ok),
    }
    for (const s of stored) {
      // The blob's size is learnt when a reader names it; until then only its disk use and recency are known.
      const blob = new CachedBlob({ digest: `sha256:${s.hex}`, size: -1 }, s.hex, this.deps, s.diskBytes)
      blob.lastUseMs = s.lastUseMs
      this.blobs.set(s.hex, blob)
      this.diskUsed += s.diskBytes
    }
    this.phase = 'open'
    this.maybeEvict()
  }

  /**
   * A reader's hold on a blob, fetching its missing blocks from `source`. Throws CorruptBlobError if the
   * blob failed verification in this process.
   */
  lease(ref: BlobRef, source: BlobSource): BlobLease {
    const blob = this.blob(ref)
    if (this.corrupt.has(ref.digest)) throw new CorruptBlobError(ref.digest)
    blob.useSource(source)
    blob.leases++
    this.touch(blob)
    let released = false
    return {
      blob,
      release: () => {
        if (released) return
        released = true
        blob.leases--
        blob.released()
        this.maybeEvict()
      },
    }
  }

  /** Bytes of blob range [start, end) in the cache (0 for a blob never opened in this process). */
  cachedBytes(ref: BlobRef, start: number, end: number): number {
    const blob = this.blobs.get(digestHex(ref.digest))
    if (!blob || !blob.loaded || blob.ref.size !== ref.size) return 0
    return blob.cachedBytes(start, end)
  }

  /** Whether the blob is cached whole and verified against its digest (false for a blob not opened here). */
  isVerified(ref: BlobRef): boolean {
    const blob = this.blobs.get(digestHex(ref.digest))
    return blob?.map !== undefined && blob.ref.size === ref.size && blob.map.verified
  }

  /** Loads a blob's map so cachedBytes() knows it (status of a model whose files were not opened yet). */
  async describe(ref: BlobRef): Promise<void> {
    const hex = digestHex(ref.digest)
    if (this.corrupt.has(ref.digest)) return
    if (!this.blobs.has(hex) && !(await this.store.readMapHeader(hex))) return
    await this.blob(ref).load()
  }

  diskBytes(): number {
    return this.diskUsed
  }

  /** False while writes into the cache fail (full or failing disk). */
  get writable(): boolean {
    return this.writeErrors.writable
  }

  get writeFailures(): number {
    return this.writeErrors.failures
  }

  /** Blobs in the cache with their fill, most recently used first. */
  async listBlobs(): Promise<CachedBlobInfo[]> {
    const out: CachedBlobInfo[] = []
    for (const b of this.blobs.values()) {
      let size = b.ref.size >= 0 ? b.ref.size : undefined
      if (size === undefined) {
        const header = await this.store.readMapHeader(b.hex)
        if (header && header.blockSize === this.blockSize) size = header.blobSize
      }
      if (size !== undefined && !b.loaded) await this.blob({ digest: b.ref.digest, size }).load().catch(() => undefined)
      const current = this.blobs.get(b.hex) ?? b
      const map = current.map
      out.push({
        digest: current.ref.digest,
        ...(size !== undefined ? { size } : {}),
        bytes: map ? map.presentBytes() : current.diskBytes,
        ...(map ? { complete: map.complete, verified: map.verified } : {}),
        lastAccess: new Date(current.lastUseMs),
      })
    }
    return out.sort((a, b) => b.lastAccess.getTime() - a.lastAccess.getTime())
  }

  /**
   * Re-hashes a cached blob: every block against its checksum and the whole against the blob's digest. True if
   * it matches; false if not (the blob is then removed). Throws EINCOMPLETE if it is not completely cached.
   */
  async verifyBlob(ref: BlobRef): Promise<boolean> {
    const blob = this.blob(ref)
    await blob.load()
    const map = blob.map!
    if (!map.complete) throw new CnaifsError('EINCOMPLETE', `blob ${ref.digest} is not completely cached`)
    blob.leases++
    try {
      const pool = this.pool!
      const blocks = Array.from({ length: map.blockCount }, (_, n) => n)
      const ok = await pool.check(blob.paths.data, ref.size, blocks, blocks.map((n) => map.checksum(n)))
      let good = ok.every(Boolean)
      if (good) {
        pool.forget(blob.paths.data, ref.digest) // a fresh running hash
        const r = await pool.prefix(ref.digest, blob.paths.data, ref.size, ref.size)
        good = r.digest === ref.digest
      }
      if (good) {
        map.markVerified()
        for (const n of blocks) map.checked(n)
        await blob.persist()
      }
      return good
    } finally {
      blob.leases--
    }
  }

  /** Evicts least recently used, unused blobs until the cache holds at most `maxBytes`. */
  async prune(maxBytes: number): Promise<{ removedBytes: number; removedBlobs: number }> {
    this.assertOpen()
    return this.evictTo(Math.max(0, maxBytes))
  }

  /** Removes a blob (map and data) and forgets that it was corrupt, so it can be fetched again. */
  async removeBlob(digest: string): Promise<void> {
    const hex = digestHex(digest)
    this.corrupt.delete(`sha256:${hex}`)
    const blob = this.blobs.get(hex)
    if (!blob) {
      await this.store.remove(hex)
      return
    }
    await this.drop(blob)
  }

  /** Makes every landed block durable, stops the workers, closes the files. */
  async close(): Promise<void> {
    if (this.phase === 'closed') return
    const wasOpen = this.phase === 'open'
    this.phase = 'closed'
    clearTimeout(this.durabilityTimer)
    await this.evicting
    const closing = new CnaifsError('ECLOSED', 'the blob cache is closing')
    for (const b of this.blobs.values()) b.failAll(closing)
    if (wasOpen) await Promise.all([...this.blobs.values()].map((b) => b.close().catch((err) => this.writeFailed(b.paths.map, err))))
    await this.pool?.close()
  }

  // ---------------------------------------------------------------------------------------------------------

  private blob(ref: BlobRef): CachedBlob {
    this.assertOpen()
    if (!Number.isSafeInteger(ref.size) || ref.size < 0) throw new FormatError(`blob ${ref.digest}: bad size ${ref.size}`)
    const hex = digestHex(ref.digest)
    const known = this.blobs.get(hex)
    if (known && known.ref.size === ref.size) return known
    if (known && known.ref.size >= 0) {
      throw new FormatError(`blob ${ref.digest}: size ${ref.size} conflicts with size ${known.ref.size} seen before`)
    }
    const blob = new CachedBlob({ digest: `sha256:${hex}`, size: ref.size }, hex, this.deps!, known?.diskBytes ?? 0)
    if (known) blob.lastUseMs = known.lastUseMs
    this.blobs.set(hex, blob)
    return blob
  }

  private touch(blob: CachedBlob): void {
    const now = Date.now()
    const stale = now - blob.lastUseMs >= DEFAULTS.cache.touchIntervalMs
    blob.lastUseMs = now
    if (stale) void utimes(blob.paths.map, now / 1000, now / 1000).catch(() => undefined)
  }

  private diskChanged(bytes: number): void {
    this.diskUsed += bytes
    if (bytes > 0) this.maybeEvict()
  }

  private scheduleDurability(blob: CachedBlob): void {
    if (this.phase !== 'open') return
    this.durable.add(blob)
    if ((blob.map?.pendingSlots ?? 0) * this.blockSize >= DEFAULTS.cache.durabilityPendingBytes) {
      this.durable.delete(blob)
      void this.persist(blob)
    }
    this.durabilityTimer ??= setTimeout(() => {
      this.durabilityTimer = undefined
      const due = [...this.durable]
      this.durable.clear()
      for (const b of due) void this.persist(b)
    }, DEFAULTS.cache.durabilityIntervalMs).unref()
  }

  private async persist(blob: CachedBlob): Promise<void> {
    try {
      await blob.persist()
      if (blob.map && !blob.map.pendingSlots) this.writeErrors.succeeded()
    } catch (err) {
      this.writeFailed(blob.paths.map, err)
      this.scheduleDurability(blob) // the slots are kept: try again later
    }
  }

  private writeFailed(path: string, err: unknown): void {
    this.writeErrors.failed(path, err)
    this.observer.onWriteError?.()
  }

  private async quarantine(blob: CachedBlob, detail: string): Promise<void> {
    if (blob.corrupt) return
    blob.corrupt = true
    this.corrupt.add(blob.ref.digest)
    this.observer.onCorruptBlob?.(blob.ref.digest)
    this.log.error({ digest: blob.ref.digest }, `blob ${blob.ref.digest} is corrupt: ${detail}; dropped from the cache, reads of it fail`)
    blob.failAll(new CorruptBlobError(blob.ref.digest, detail))
    await this.drop(blob).catch((err) => this.log.warn({ digest: blob.ref.digest, error: errorMessage(err) }, 'blob cache: cannot remove a corrupt blob'))
  }

  /** Removes a blob's files and forgets its state (a fresh, empty state replaces it). */
  private async drop(blob: CachedBlob): Promise<number> {
    const bytes = blob.diskBytes
    this.durable.delete(blob)
    await blob.close()
    this.pool?.forget(blob.paths.data, blob.ref.digest)
    await this.store.remove(blob.hex)
    this.memory.dropBlob(blob.hex)
    this.diskUsed -= bytes
    blob.reset()
    if (!blob.corrupt) this.blobs.delete(blob.hex)
    return bytes
  }

  private maybeEvict(): void {
    if (this.diskUsed <= this.maxDiskBytes || this.evicting || this.phase !== 'open') return
    this.evicting = this.evictTo(this.maxDiskBytes).then(() => undefined, (err) => {
      this.log.warn({ error: errorMessage(err) }, 'blob cache: eviction failed')
    }).finally(() => { this.evicting = undefined })
  }

  private async evictTo(limit: number): Promise<{ removedBytes: number; removedBlobs: number }> {
    let removedBytes = 0
    let removedBlobs = 0
    for (const victim of chooseVictims(this.blobs.values(), this.diskUsed, limit)) {
      const bytes = await this.drop(victim)
      removedBytes += bytes
      removedBlobs++
      this.observer.onEvict?.(bytes)
      this.log.debug({ digest: victim.ref.digest, bytes }, 'blob cache: evicted blob')
    }
    if (this.diskUsed > limit && this.phase === 'open') {
      this.log.warn({ diskBytes: this.diskUsed, limit }, 'blob cache is over its size limit, but the remaining blobs are in use; it shrinks when they are released')
    }
    return { removedBytes, removedBlobs }
  }

  private assertOpen(): void {
    if (this.phase === 'new') throw new CnaifsError('EINVAL', 'BlobCache.init() must complete before the cache is used')
    if (this.phase === 'closed') throw new CnaifsError('ECLOSED', 'the blob cache is closed')
  }
}

export { BlockState, isHex }
