/**
 * Front-to-back reads of a compressed blob for the one indexing pass, and the hashes taken on the way: the
 * blob's sha256 (checked against its digest) and one sha256 per VERIFY_CHUNK of compressed bytes, so later
 * random reads can check every compressed byte they use without reading the whole blob again.
 */
import { createHash, type Hash } from 'node:crypto'

/** Reads `length` bytes at `offset` of the compressed blob (a ranged GET). Never asked past its size. */
export type CompressedRangeReader = (offset: number, length: number, signal?: AbortSignal) => Promise<Buffer>

/** Grid on which compressed bytes are verified by random reads (and the unit they fetch in). */
export const VERIFY_CHUNK = 1024 * 1024
const HASH_BYTES = 32

export interface SequentialOptions {
  /** Bytes per ranged read (default 8 MiB). */
  partBytes?: number
  /** Parts requested ahead of the consumer (default 2): the network works while we decompress. */
  ahead?: number
  signal?: AbortSignal
}

/** Yields the whole blob in order, `partBytes` at a time, keeping up to `ahead` reads in flight. */
export async function* readSequential(size: number, read: CompressedRangeReader, o: SequentialOptions = {}): AsyncGenerator<Buffer> {
  const partBytes = o.partBytes ?? 8 * 1024 * 1024
  const ahead = Math.max(1, o.ahead ?? 2)
  const inFlight: Promise<Buffer>[] = []
  let next = 0
  const launch = () => {
    while (inFlight.length < ahead && next < size) {
      const offset = next
      const length = Math.min(partBytes, size - offset)
      next += length
      const p = read(offset, length, o.signal).then((b) => {
        if (b.length !== length) throw new Error(`short read at ${offset}: ${b.length} of ${length} bytes`)
        return b
      })
      p.catch(() => {}) // observed when awaited; avoids an unhandled rejection while it waits its turn
      inFlight.push(p)
    }
  }
  launch()
  while (inFlight.length) {
    const part = await inFlight.shift()!
    launch()
    yield part
  }
}

/** sha256 of the whole stream plus one sha256 per VERIFY_CHUNK-aligned chunk. */
export class ChunkHasher {
  private readonly whole = createHash('sha256')
  private chunk: Hash = createHash('sha256')
  private inChunk = 0
  private readonly hashes: Buffer[] = []
  bytes = 0

  update(data: Buffer): void {
    this.whole.update(data)
    this.bytes += data.length
    let pos = 0
    while (pos < data.length) {
      const take = Math.min(VERIFY_CHUNK - this.inChunk, data.length - pos)
      this.chunk.update(data.subarray(pos, pos + take))
      this.inChunk += take
      pos += take
      if (this.inChunk === VERIFY_CHUNK) this.closeChunk()
    }
  }

  private closeChunk(): void {
    this.hashes.push(this.chunk.digest())
    this.chunk = createHash('sha256')
    this.inChunk = 0
  }

  /** The blob digest and the concatenated chunk hashes (32 bytes each). */
  finish(): { digest: string; chunkHashes: Buffer } {
    if (this.inChunk > 0) this.closeChunk()
    return { digest: 'sha256:' + this.whole.digest('hex'), chunkHashes: Buffer.concat(this.hashes) }
  }
}

export function chunkHash(chunkHashes: Buffer, n: number): Buffer {
  return chunkHashes.subarray(n * HASH_BYTES, (n + 1) * HASH_BYTES)
}

export function chunkCount(size: number): number {
  return Math.ceil(size / VERIFY_CHUNK)
}

/** Gives the event loop a turn when more than `budgetMs` of synchronous work has run since the last one. */
export class Yielder {
  private last = performance.now()
  /** Longest synchronous stretch seen between two yields (for the benchmark's event-loop report). */
  longestMs = 0
  constructor(private readonly budgetMs = 10) {}

  async maybe(): Promise<void> {
    const now = performance.now()
    if (now - this.last < this.budgetMs) return
    this.longestMs = Math.max(this.longestMs, now - this.last)
    await new Promise<void>((r) => setImmediate(r))
    this.last = performance.now()
  }

  /** Call after an await that may have let others run (resets the stretch). */
  reset(): void {
    const now = performance.now()
    this.longestMs = Math.max(this.longestMs, now - this.last)
    this.last = now
  }
}
