/**
 * Lists a tar from its bytes as they stream out of a decompressor, with the very walker that lists plain tar
 * layers (walkTar in src/index/tar.ts), so entries, offsets (uncompressed) and every hostile-input check are
 * identical. The walker asks for ranges in increasing order; this source hands them out as the stream reaches
 * them and forgets every byte before the walker's current request, so memory stays at one decompressed chunk
 * however large the files in the tar are.
 *
 * The uncompressed size is unknown until the stream ends, so the walker is given an unbounded size; when the
 * stream ends exactly where the walker wants its next header, it is handed two zero blocks, which ends the
 * walk the way `offset === size` would (a tar without end-of-archive blocks is accepted, as walkTar accepts
 * it). A request that runs past the end is a truncated archive.
 */
import { TarFormatError, walkTar, type RangeSource, type TarEntry } from '../index/tar.js'

const BLOCK = 512

interface Want {
  offset: number
  length: number
  resolve: (b: Buffer) => void
  reject: (e: unknown) => void
}

export class StreamingTarIndexer {
  private chunks: Buffer[] = []
  /** Absolute offset of chunks[0][0]. */
  private base = 0
  private produced = 0
  private ended = false
  private want: Want | undefined
  private idle: (() => void) | undefined
  private finished = false
  private servedEndBlock = false
  private readonly result: Promise<TarEntry[]>

  constructor(options: { maxEntries?: number } = {}) {
    const source: RangeSource = { size: Number.MAX_SAFE_INTEGER, read: (offset, length) => this.read(offset, length) }
    // readAheadBytes 512: every request is exactly what the walker needs, never a speculative window past the end.
    this.result = walkTar(source, { readAheadBytes: BLOCK, maxEntries: options.maxEntries }).finally(() => {
      this.finished = true
      this.chunks = []
      this.wake()
    })
    this.result.catch(() => {}) // reported by end() (or by push() as soon as it is known)
  }

  /** Uncompressed bytes seen so far. */
  get bytes(): number {
    return this.produced
  }

  /** Feeds the next decompressed bytes; resolves once the walker has used what it can of them. */
  async push(data: Buffer): Promise<void> {
    if (data.length === 0) return
    this.produced += data.length
    if (this.finished) return this.failFast()
    this.chunks.push(data)
    const w = this.want
    if (w && w.offset + w.length <= this.produced) {
      this.want = undefined
      w.resolve(this.slice(w.offset, w.length))
    }
    await this.settled()
    this.trim()
    return this.failFast()
  }

  /** The stream is over: returns the entries, or throws the walker's error. */
  async end(): Promise<TarEntry[]> {
    this.ended = true
    const w = this.want
    if (w) {
      this.want = undefined
      try {
        w.resolve(this.atEnd(w.offset, w.length))
      } catch (err) {
        w.reject(err)
      }
    }
    return this.result
  }

  private async failFast(): Promise<void> {
    // A walker that already failed stops the pass at once rather than after decompressing everything.
    if (this.finished) await this.result
  }

  private read(offset: number, length: number): Promise<Buffer> {
    if (offset < this.base) return Promise.reject(new Error(`tar walker asked for offset ${offset}, before the retained stream at ${this.base}`))
    if (offset + length <= this.produced) return Promise.resolve(this.slice(offset, length))
    if (this.ended) {
      try {
        return Promise.resolve(this.atEnd(offset, length))
      } catch (err) {
        return Promise.reject(err)
      }
    }
    return new Promise<Buffer>((resolve, reject) => {
      this.want = { offset, length, resolve, reject }
      this.wake()
    })
  }

  private atEnd(offset: number, length: number): Buffer {
    // The stream ended on a header boundary: two zero blocks end the walk like the end of a plain blob does.
    // Only exactly there: a header asked for further on means data ran past the end (truncated).
    if (length === BLOCK && (offset === this.produced || (this.servedEndBlock && offset === this.produced + BLOCK))) {
      this.servedEndBlock = true
      return Buffer.alloc(BLOCK)
    }
    throw new TarFormatError(`truncated archive: ${length} bytes needed at offset ${offset} but the layer ends at ${this.produced} bytes`)
  }

  /** Resolves when the walker waits for bytes not produced yet, or has finished. */
  private settled(): Promise<void> {
    if (this.want || this.finished) return Promise.resolve()
    return new Promise<void>((r) => { this.idle = r })
  }

  private wake(): void {
    const r = this.idle
    this.idle = undefined
    r?.()
  }

  /** Drops chunks wholly before the walker's pending request (its requests never go backwards). */
  private trim(): void {
    const keepFrom = this.want ? this.want.offset : this.produced
    while (this.chunks.length && this.base + this.chunks[0]!.length <= keepFrom) {
      this.base += this.chunks.shift()!.length
    }
  }

  private slice(offset: number, length: number): Buffer {
    const out = Buffer.allocUnsafe(length)
    let pos = this.base
    let filled = 0
    for (const c of this.chunks) {
      const end = pos + c.length
      if (end > offset && filled < length) {
        const from = Math.max(0, offset + filled - pos)
        const n = Math.min(c.length - from, length - filled)
        c.copy(out, filled, from, from + n)
        filled += n
      }
      pos = end
      if (filled === length) break
    }
    if (filled !== length) throw new Error(`internal: tar stream slice ${offset}+${length} not retained`)
    return out
  }
}
