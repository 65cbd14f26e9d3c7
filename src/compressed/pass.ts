/**
 * The one sequential pass over a compressed layer: reads the blob front to back (ranged reads, a part or two
 * ahead), checks it against its digest, decompresses it with a format engine (gzip or zstd) that records
 * segments and checkpoints, hashes the uncompressed bytes (the diffId) and lists the tar from them.
 */
import { createHash } from 'node:crypto'
import type { TarEntry } from '../index/tar.js'
import { DigestMismatchError } from '../util/errors.js'
import type { BlobRef, Checkpoint, Segment } from './index-store.js'
import { ChunkHasher, readSequential, Yielder, type CompressedRangeReader } from './sequential.js'
import { StreamingTarIndexer } from './tar-follower.js'

export type OutputSink = (data: Buffer) => Promise<void>

/** A decompressor that also maps the stream (segments, checkpoints) as it goes. */
export interface PassEngine {
  /** Queues compressed bytes (in order). */
  feed(data: Buffer): void
  /** Decompresses what the queued bytes allow, handing output to `out`. */
  run(out: OutputSink, y: Yielder): Promise<void>
  /** No more input: decompresses the rest and checks the stream ended where a stream may end. */
  finish(out: OutputSink, y: Yielder): Promise<void>
  readonly segments: Segment[]
  readonly checkpoints: Checkpoint[]
  readonly seekTable?: boolean
}

export interface IndexPassResult {
  diffId: string
  size: number
  entries: TarEntry[]
  segments: Segment[]
  checkpoints: Checkpoint[]
  chunkHashes: Buffer
  seekTable?: boolean
  /** Longest stretch of synchronous work between two event-loop turns, in ms. */
  longestSliceMs: number
}

export interface IndexPassOptions {
  blob: BlobRef
  read: CompressedRangeReader
  engine: PassEngine
  signal?: AbortSignal
  maxEntries?: number
  onProgress?: (compressedBytes: number) => void
}

export async function runIndexPass(o: IndexPassOptions): Promise<IndexPassResult> {
  const hasher = new ChunkHasher()
  const uncompressed = createHash('sha256')
  const tar = new StreamingTarIndexer({ maxEntries: o.maxEntries })
  const y = new Yielder(10)
  let size = 0
  const out: OutputSink = async (data) => {
    uncompressed.update(data)
    size += data.length
    await tar.push(data)
    await y.maybe()
  }
  try {
    for await (const part of readSequential(o.blob.size, o.read, { signal: o.signal })) {
      y.reset()
      hasher.update(part)
      o.engine.feed(part)
      await o.engine.run(out, y)
      o.onProgress?.(hasher.bytes)
    }
    await o.engine.finish(out, y)
  } catch (err) {
    await tar.end().catch(() => {})
    throw err
  }
  const { digest, chunkHashes } = hasher.finish()
  if (digest !== o.blob.digest) throw new DigestMismatchError(`layer blob ${o.blob.digest}`, o.blob.digest, digest)
  const entries = await tar.end()
  return {
    diffId: 'sha256:' + uncompressed.digest('hex'),
    size,
    entries,
    segments: o.engine.segments,
    checkpoints: o.engine.checkpoints,
    chunkHashes,
    seekTable: o.engine.seekTable,
    longestSliceMs: y.longestMs,
  }
}
