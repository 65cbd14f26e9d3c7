/**
 * The uncompressed content of a compressed tar layer as a random-access blob: `read(offset, length)` starts
 * at the nearest checkpoint (or a decoder a previous read left just before the offset), decompresses and
 * returns the bytes. `key` is { diffId, uncompressed size }: the block cache keys and verifies the
 * decompressed blocks by it, exactly as it does an uncompressed layer's blocks by the layer digest.
 */
import type { TarEntry } from '../index/tar.js'
import { silentLogger, type Logger } from '../util/log.js'
import { describeInvalid } from '../util/stored.js'
import { VerifiedChunks } from './chunks.js'
import type { Decoder } from './decoder.js'
import { shortDigest } from './errors.js'
import { GzipIndexEngine } from './gzip-index.js'
import { gzipDecoderAt } from './gzip-reader.js'
import { CompressedIndexStore, segmentTuples, type BlobRef, type Checkpoint, type CompressedFormat, type CompressedIndex } from './index-store.js'
import { runIndexPass, type PassEngine } from './pass.js'
import { VERIFY_CHUNK, type CompressedRangeReader } from './sequential.js'
import { ZstdDecoder, ZstdIndexEngine } from './zstd.js'

export type { BlobRef, CompressedFormat, CompressedIndex }

export interface UncompressedView {
  /** { digest: diffId, size: uncompressed size } */
  key: BlobRef
  compressed: BlobRef
  read(offset: number, length: number, signal?: AbortSignal): Promise<Buffer>
}

export interface CheckpointViewOptions {
  /** Decoders kept after a read for the next one to continue (default 2). */
  maxIdleDecoders?: number
  /** Verified compressed chunks kept in memory (default 8, of VERIFY_CHUNK bytes). */
  chunkCache?: number
}

export class CheckpointView implements UncompressedView {
  readonly key: BlobRef
  readonly compressed: BlobRef
  private readonly chunks: VerifiedChunks
  private idle: Decoder[] = []
  private readonly maxIdle: number

  constructor(readonly index: CompressedIndex, read: CompressedRangeReader, o: CheckpointViewOptions = {}) {
    this.key = { digest: index.diffId, size: index.size }
    this.compressed = index.compressed
    this.chunks = new VerifiedChunks(index.compressed, index.chunkHashes, read, o.chunkCache ?? 8)
    this.maxIdle = o.maxIdleDecoders ?? 2
  }

  /** Compressed bytes fetched by reads so far. */
  get fetchedBytes(): number {
    return this.chunks.fetchedBytes
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.key.size) {
      throw new RangeError(`read of ${length} bytes at ${offset} outside the ${this.key.size}-byte uncompressed layer ${shortDigest(this.key.digest)}`)
    }
    const out = Buffer.allocUnsafe(length)
    if (length === 0) return out
    const end = offset + length
    const dec = await this.decoderFor(offset)
    try {
      await dec.decodeTo(end, (data, at) => {
        const from = Math.max(offset, at)
        const to = Math.min(end, at + data.length)
        if (to > from) data.copy(out, from - offset, from - at, to - at)
      }, signal)
    } catch (err) {
      dec.close()
      throw err
    }
    this.release(dec)
    return out
  }

  /** The checkpoint a read at `offset` starts from. */
  checkpointFor(offset: number): Checkpoint {
    const cps = this.index.checkpoints
    let lo = 0
    let hi = cps.length - 1
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1
      if (cps[mid]!.out <= offset) lo = mid
      else hi = mid - 1
    }
    return cps[lo]!
  }

  private async decoderFor(offset: number): Promise<Decoder> {
    const cp = this.checkpointFor(offset)
    let best = -1
    this.idle.forEach((d, i) => {
      if (d.position <= offset && d.position >= cp.out && (best < 0 || d.position > this.idle[best]!.position)) best = i
    })
    if (best >= 0) return this.idle.splice(best, 1)[0]!
    return this.index.format === 'gzip' ? gzipDecoderAt(this.index, this.chunks, cp) : new ZstdDecoder(this.index, this.chunks, cp)
  }

  private release(dec: Decoder): void {
    if (!dec.reusable || dec.position >= this.key.size) {
      dec.close()
      return
    }
    this.idle.push(dec)
    while (this.idle.length > this.maxIdle) this.idle.shift()!.close()
  }

  close(): void {
    for (const d of this.idle) d.close()
    this.idle = []
  }
}

export interface BuildOptions {
  blob: BlobRef
  format: CompressedFormat
  read: CompressedRangeReader
  signal?: AbortSignal
  /** Uncompressed bytes between checkpoints (default 4 MiB). */
  spacing?: number
  /** gzip: accept a checkpoint at an unaligned block boundary this far past the last one (default 2 × spacing). */
  unalignedAfter?: number
  maxEntries?: number
  onProgress?: (compressedBytes: number) => void
}

export interface BuildResult {
  index: CompressedIndex
  /** Longest synchronous stretch of the pass, in ms. */
  longestSliceMs: number
  ms: number
}

/** The one pass over a compressed layer; the index is saved under `store` before it is returned. */
export async function buildCompressedIndex(store: CompressedIndexStore, o: BuildOptions): Promise<BuildResult> {
  const started = performance.now()
  const writer = await store.writer(o.blob.digest)
  try {
    const engine: PassEngine = o.format === 'gzip'
      ? new GzipIndexEngine({ digest: o.blob.digest, spacing: o.spacing, unalignedAfter: o.unalignedAfter, storeWindow: (w) => writer.appendWindow(w) })
      : new ZstdIndexEngine({ digest: o.blob.digest, spacing: o.spacing })
    const r = await runIndexPass({ blob: o.blob, read: o.read, engine, signal: o.signal, maxEntries: o.maxEntries, onProgress: o.onProgress })
    const index = await writer.finish({
      format: o.format,
      compressed: o.blob,
      diffId: r.diffId,
      size: r.size,
      entries: r.entries,
      segments: segmentTuples(r.segments),
      checkpoints: r.checkpoints,
      chunkSize: VERIFY_CHUNK,
      ...(r.seekTable !== undefined ? { seekTable: r.seekTable } : {}),
    }, r.chunkHashes)
    return { index, longestSliceMs: r.longestSliceMs, ms: performance.now() - started }
  } catch (err) {
    await writer.abort()
    throw err
  }
}

export interface OpenCompressedOptions extends BuildOptions {
  cacheDir: string
  /** Reads for the view's random reads (default: `read`, which the indexing pass uses). */
  viewRead?: CompressedRangeReader
  log?: Logger
  view?: CheckpointViewOptions
}

export interface OpenedCompressedLayer {
  entries: TarEntry[]
  index: CompressedIndex
  view: CheckpointView
  /** True when this call ran the indexing pass; false when the stored index was used. */
  built: boolean
}

/** Loads the stored index of a compressed layer blob, or builds it (once per blob, ever), and opens its view. */
export async function openCompressedLayer(o: OpenCompressedOptions): Promise<OpenedCompressedLayer> {
  const store = new CompressedIndexStore(o.cacheDir)
  const log = o.log ?? silentLogger()
  const stored = await store.read(o.blob.digest)
  let index = stored.state === 'ok' ? stored.value : undefined
  if (index && (index.format !== o.format || index.compressed.size !== o.blob.size)) {
    log.warn({ blob: o.blob.digest, file: stored.path }, `the compressed index ${stored.path} is for a ${index.format} blob of ${index.compressed.size} bytes, not this ${o.format} layer of ${o.blob.size}: rebuilding it`)
    index = undefined
  }
  if (stored.state === 'invalid') log.warn({ blob: o.blob.digest, file: stored.path, reason: stored.reason }, `${describeInvalid('the compressed index', stored)}: rebuilding it from the registry`)
  let built = false
  if (!index) {
    const r = await buildCompressedIndex(store, o)
    index = r.index
    built = true
    log.info({ event: 'compressed-index', blob: o.blob.digest, format: o.format, compressedBytes: o.blob.size, bytes: index.size,
      checkpoints: index.checkpoints.length, ms: Math.round(r.ms), longestSliceMs: Math.round(r.longestSliceMs) }, 'indexed a compressed layer')
  }
  return { entries: index.entries, index, view: new CheckpointView(index, o.viewRead ?? o.read, o.view), built }
}
