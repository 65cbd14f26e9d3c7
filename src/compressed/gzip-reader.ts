/**
 * Random reads of a tar+gzip layer: start at the last checkpoint before the wanted offset, prime the
 * decompressor with the checkpoint's 32 KiB window, decompress (discarding output up to the offset) and cross
 * member boundaries using the segments the index recorded. Byte-aligned checkpoints and member starts run on
 * Node's zlib (inflateRaw with the window as dictionary; the work happens on the libuv thread pool, not on the
 * event loop); an unaligned checkpoint runs on pako, primed with the leading bits of its first byte.
 */
import { createInflateRaw, type InflateRaw } from 'node:zlib'
import type { VerifiedChunks } from './chunks.js'
import { Decoder } from './decoder.js'
import { DecompressionError, shortDigest } from './errors.js'
import { Z_BUF_ERROR, Z_NO_FLUSH, Z_OK, Z_STREAM_END, inflate, inflateEnd, rawInflater, type ZStream } from './gzip-format.js'
import type { Checkpoint, CompressedIndex } from './index-store.js'
import { Yielder } from './sequential.js'

/** Compressed bytes handed to the decompressor at a time (bounds the output of one step). */
const PIECE = 64 * 1024
const OUT_CHUNK = 256 * 1024

export async function gzipDecoderAt(index: CompressedIndex, chunks: VerifiedChunks, cp: Checkpoint): Promise<Decoder> {
  const window = await index.readWindow(cp)
  return cp.bit % 8 === 0 ? new NativeGzipDecoder(index, chunks, cp, window) : new PakoGzipDecoder(index, chunks, cp, window)
}

/** Shared: walks the members from the checkpoint's one to the end of the layer. */
abstract class GzipDecoder extends Decoder {
  protected seg: number
  protected inPos: number
  protected readonly ratio: number

  constructor(protected readonly index: CompressedIndex, protected readonly chunks: VerifiedChunks, cp: Checkpoint) {
    super(cp.out)
    this.seg = cp.seg
    this.inPos = Math.floor(cp.bit / 8)
    this.ratio = index.size > 0 ? index.compressed.size / index.size : 1
  }

  protected describe(): string {
    return `layer blob ${shortDigest(this.index.compressed.digest)} (gzip)`
  }

  protected error(what: string, cause?: unknown): DecompressionError {
    return new DecompressionError(`${this.describe()}: ${what} (near compressed byte ${this.inPos})`, { cause })
  }

  /** Compressed bytes still expected to be needed to reach `target` (for read-ahead). */
  protected moreFor(target: number): number {
    return target > this.produced ? (target - this.produced) * this.ratio * 1.1 + 64 * 1024 : 0
  }

  protected target = 0

  override decodeTo(end: number, sink: (data: Buffer, at: number) => void, signal?: AbortSignal): Promise<void> {
    this.target = end
    return super.decodeTo(end, sink, signal)
  }

  /** At the end of a member's deflate data: checks its size and moves to the next member. False at the end. */
  protected nextMember(): boolean {
    const s = this.index.segments[this.seg]!
    if (this.produced !== s.outEnd) throw this.error(`member ${this.seg + 1} decompressed to ${this.produced - s.out} bytes, the index says ${s.outEnd - s.out}`)
    this.seg++
    const n = this.index.segments[this.seg]
    if (!n) return false
    this.inPos = n.in
    return true
  }
}

class NativeGzipDecoder extends GzipDecoder {
  private inf: InflateRaw | undefined
  private failure: Error | undefined

  constructor(index: CompressedIndex, chunks: VerifiedChunks, cp: Checkpoint, window: Buffer) {
    super(index, chunks, cp)
    this.start(window)
  }

  private start(dictionary?: Buffer): void {
    const inf = createInflateRaw({ chunkSize: OUT_CHUNK, ...(dictionary && dictionary.length ? { dictionary } : {}) })
    inf.on('data', (d: Buffer) => this.emit(d))
    inf.on('error', (e) => { this.failure ??= e })
    this.inf = inf
  }

  protected async step(signal?: AbortSignal): Promise<boolean> {
    const s = this.index.segments[this.seg]!
    if (this.inPos >= s.end) {
      // Output of the last write may still be on its way to 'data'.
      await new Promise<void>((r) => setImmediate(r))
      this.inf?.destroy()
      this.inf = undefined
      if (!this.nextMember()) return false
      this.start()
      return true
    }
    const piece = await this.chunks.piece(this.inPos, s.end, PIECE, this.moreFor(this.target), signal)
    await new Promise<void>((resolve, reject) => {
      this.inf!.write(piece, (err) => (err || this.failure ? reject(this.error(`data error: ${(err ?? this.failure)!.message}`, err ?? this.failure)) : resolve()))
    })
    this.inPos += piece.length
    return true
  }

  close(): void {
    this.inf?.destroy()
    this.inf = undefined
  }
}

class PakoGzipDecoder extends GzipDecoder {
  private strm: ZStream | undefined
  private readonly y = new Yielder(8)
  private pending: { window: Buffer; bits: number } | undefined

  constructor(index: CompressedIndex, chunks: VerifiedChunks, cp: Checkpoint, window: Buffer) {
    super(index, chunks, cp)
    // The checkpoint is `bits` bits into byte inPos: those leading bits belong to the previous block.
    this.pending = { window, bits: cp.bit % 8 }
  }

  protected async step(signal?: AbortSignal): Promise<boolean> {
    const s = this.index.segments[this.seg]!
    if (this.inPos >= s.end) {
      if (this.strm) inflateEnd(this.strm)
      this.strm = undefined
      if (!this.nextMember()) return false
      this.strm = rawInflater()
      return true
    }
    let piece = await this.chunks.piece(this.inPos, s.end, PIECE, this.moreFor(this.target), signal)
    this.y.reset()
    this.inPos += piece.length
    if (this.pending) {
      const { window, bits } = this.pending
      this.pending = undefined
      this.strm = rawInflater(window, { value: piece[0]! >> bits, bits: 8 - bits })
      piece = piece.subarray(1)
    }
    this.strm ??= rawInflater()
    const strm = this.strm
    strm.input = piece
    strm.next_in = 0
    strm.avail_in = piece.length
    for (;;) {
      const out = new Uint8Array(OUT_CHUNK)
      strm.output = out
      strm.next_out = 0
      strm.avail_out = OUT_CHUNK
      const ret = inflate(strm, Z_NO_FLUSH)
      if (strm.next_out > 0) this.emit(Buffer.from(out.buffer, 0, strm.next_out))
      if (ret === Z_STREAM_END) {
        if (strm.avail_in > 0) throw this.error('data after the end of the member\'s deflate stream')
        break
      }
      if (ret !== Z_OK && ret !== Z_BUF_ERROR) throw this.error(`data error: ${strm.msg || ret}`)
      // Input used up and room left: all output for it is out (a full buffer may mean more is pending).
      if (strm.avail_in === 0 && strm.avail_out > 0) break
      await this.y.maybe()
    }
    return true
  }

  close(): void {
    if (this.strm) inflateEnd(this.strm)
    this.strm = undefined
  }
}
