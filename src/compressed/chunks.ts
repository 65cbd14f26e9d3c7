/**
 * Compressed bytes for random reads, fetched in VERIFY_CHUNK-aligned chunks and each checked against the
 * sha256 recorded by the indexing pass (which checked the whole blob against its digest), so a decoder only
 * ever sees the bytes the layer digest names. Recent chunks are kept (a few MiB) and concurrent reads of one
 * chunk share a single fetch.
 */
import { createHash } from 'node:crypto'
import { DeadlineError } from '../registry/errors.js'
import { DigestMismatchError } from '../util/errors.js'
import type { BlobRef } from './index-store.js'
import { chunkHash, VERIFY_CHUNK, type CompressedRangeReader } from './sequential.js'

/** Chunks fetched ahead of the one being decompressed, at most. */
const MAX_AHEAD = 4

export class VerifiedChunks {
  /** Compressed bytes fetched from the registry (tests and benchmarks count them). */
  fetchedBytes = 0
  private readonly held = new Map<number, Promise<Buffer>>()

  constructor(
    private readonly blob: BlobRef,
    private readonly hashes: Buffer,
    private readonly read: CompressedRangeReader,
    private readonly capacity = 8,
  ) {}

  /** Chunk `n` (VERIFY_CHUNK bytes, the last one shorter), verified. */
  get(n: number, signal?: AbortSignal): Promise<Buffer> {
    let p = this.held.get(n)
    if (p) {
      this.held.delete(n) // re-insert: most recently used last
      this.held.set(n, p)
    } else {
      p = this.fetch(n)
      this.held.set(n, p)
      p.catch(() => { if (this.held.get(n) === p) this.held.delete(n) })
      while (this.held.size > this.capacity) this.held.delete(this.held.keys().next().value!)
    }
    return signal ? raceAbort(p, signal, () => `${describe(this.blob)}: read aborted (deadline)`) : p
  }

  /** Asks for chunk `n` now without waiting (read-ahead). */
  prefetch(n: number): void {
    if (n * VERIFY_CHUNK < this.blob.size) this.get(n).catch(() => {})
  }

  /**
   * Bytes from `pos` up to `limit` (exclusive), at most `max` of them, from one chunk. `more` estimates how
   * many compressed bytes the caller still needs: the chunks those lie in are fetched ahead, in parallel.
   */
  async piece(pos: number, limit: number, max: number, more: number, signal?: AbortSignal): Promise<Buffer> {
    const n = Math.floor(pos / VERIFY_CHUNK)
    const chunk = await this.get(n, signal)
    const from = pos - n * VERIFY_CHUNK
    const to = Math.min(chunk.length, limit - n * VERIFY_CHUNK, from + max)
    // Ask for every further chunk the caller is expected to need now, so they arrive in parallel.
    const lastNeeded = Math.floor((Math.min(limit, pos + more) - 1) / VERIFY_CHUNK)
    for (let k = n + 1; k <= Math.min(lastNeeded, n + MAX_AHEAD); k++) this.prefetch(k)
    return chunk.subarray(from, to)
  }

  private async fetch(n: number): Promise<Buffer> {
    const offset = n * VERIFY_CHUNK
    const length = Math.min(VERIFY_CHUNK, this.blob.size - offset)
    const expected = chunkHash(this.hashes, n)
    let actual = ''
    for (let attempt = 0; attempt < 2; attempt++) {
      const data = await this.read(offset, length)
      this.fetchedBytes += data.length
      const h = createHash('sha256').update(data).digest()
      if (data.length === length && h.equals(expected)) return data
      actual = h.toString('hex') // a bad transfer: fetch once more before giving up
    }
    throw new DigestMismatchError(`${describe(this.blob)} bytes ${offset}-${offset + length - 1}`, 'sha256:' + expected.toString('hex'), 'sha256:' + actual)
  }
}

function describe(blob: BlobRef): string {
  return `layer blob ${blob.digest.slice(0, 19)}…`
}

function raceAbort<T>(p: Promise<T>, signal: AbortSignal, message: () => string): Promise<T> {
  if (signal.aborted) return Promise.reject(new DeadlineError(message()))
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new DeadlineError(message()))
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(
      (v) => { signal.removeEventListener('abort', onAbort); resolve(v) },
      (e) => { signal.removeEventListener('abort', onAbort); reject(e) },
    )
  })
}
