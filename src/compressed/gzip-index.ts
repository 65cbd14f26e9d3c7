/**
 * The indexing engine for tar+gzip layers: one pass with pako's raw inflate in Z_BLOCK mode, which returns at
 * every deflate block boundary. Every ~`spacing` bytes of output a checkpoint is taken at such a boundary:
 * the bit position in the compressed stream and the 32 KiB window before it (zlib's zran.c technique), so a
 * later read can start decompressing there instead of at the start of the layer.
 *
 * Checkpoints are taken at byte-aligned block boundaries when one comes along (about one boundary in eight
 * is): those can be resumed with Node's native zlib (inflateRaw + dictionary, off the main thread, several
 * times faster than pako). If none comes within `unalignedAfter` bytes, an unaligned boundary is taken and
 * reads resume there with pako and a primed bit buffer. Each gzip member (pigz output, `cat a.gz b.gz`) is a
 * segment; its start is a free checkpoint (no window needed), and its trailer (CRC-32, size) is verified.
 */
import crc32 from 'pako/lib/zlib/crc32.js'
import { ByteQueue } from './byte-queue.js'
import { DecompressionError, shortDigest } from './errors.js'
import { MAX_GZIP_HEADER, Z_BLOCK, Z_BUF_ERROR, Z_OK, Z_STREAM_END, gzipHeaderLength, heldBits, inflate, inflateEnd, rawInflater, windowOf, type ZStream } from './gzip-format.js'
import type { Checkpoint, Segment } from './index-store.js'
import type { OutputSink, PassEngine } from './pass.js'
import type { Yielder } from './sequential.js'

export const DEFAULT_SPACING = 4 * 1024 * 1024
const OUT_CHUNK = 256 * 1024
const IN_PIECE = 256 * 1024

export interface GzipEngineOptions {
  /** Compressed blob digest, for messages. */
  digest: string
  /** Uncompressed bytes between checkpoints (default 4 MiB). */
  spacing?: number
  /** Take an unaligned boundary once this far past the last checkpoint (default 2 × spacing). */
  unalignedAfter?: number
  /** Stores a checkpoint's window; returns where it went. */
  storeWindow: (window: Buffer) => Promise<[number, number]>
}

const enum State { Header, Deflate, Trailer, Padding }

export class GzipIndexEngine implements PassEngine {
  readonly segments: Segment[] = []
  readonly checkpoints: Checkpoint[] = []
  private readonly q = new ByteQueue(0)
  private state = State.Header
  private strm: ZStream | undefined
  private obuf: Uint8Array | undefined
  private pieceStart = 0
  /** Uncompressed bytes handed out so far. */
  private out = 0
  private memberOut = 0
  private crc = 0
  private lastCheckpoint = -Infinity
  private readonly spacing: number
  private readonly unalignedAfter: number

  constructor(private readonly o: GzipEngineOptions) {
    this.spacing = o.spacing ?? DEFAULT_SPACING
    this.unalignedAfter = o.unalignedAfter ?? 2 * this.spacing
  }

  feed(data: Buffer): void {
    this.q.push(data)
  }

  run(out: OutputSink, y: Yielder): Promise<void> {
    return this.drive(out, y, false)
  }

  async finish(out: OutputSink, y: Yielder): Promise<void> {
    await this.drive(out, y, true)
    if (this.segments.length === 0) throw this.error('the layer is empty: no gzip member')
  }

  private error(what: string, at?: number): DecompressionError {
    return new DecompressionError(`layer blob ${shortDigest(this.o.digest)}: gzip: ${what}${at === undefined ? '' : ` (compressed byte ${at})`}`)
  }

  private async drive(out: OutputSink, y: Yielder, ending: boolean): Promise<void> {
    for (;;) {
      switch (this.state) {
        case State.Header: {
          if (this.q.length === 0) return
          const first = this.q.peek(1)![0]
          if (first === 0 && this.segments.length > 0) { this.state = State.Padding; break }
          const head = this.q.peek(Math.min(this.q.length, MAX_GZIP_HEADER))!
          const len = gzipHeaderLength(head)
          if (len === 'more') {
            if (ending) throw this.error('truncated member header', this.q.position)
            return
          }
          if (typeof len !== 'number') throw this.error(len.bad, this.q.position)
          this.q.skip(len)
          this.strm = rawInflater()
          this.segments.push({ in: this.q.position, end: -1, out: this.out, outEnd: -1 })
          this.memberOut = this.out
          this.crc = 0
          // A member start needs no window: keep it as a checkpoint unless one is very close.
          if (this.out - this.lastCheckpoint >= this.spacing / 4) this.addCheckpoint({ out: this.out, bit: this.q.position * 8, seg: this.segments.length - 1 })
          this.state = State.Deflate
          break
        }
        case State.Deflate: {
          if (!(await this.inflateQueued(out, y))) {
            if (ending) throw this.error('truncated deflate stream', this.q.position)
            return
          }
          this.state = State.Trailer
          break
        }
        case State.Trailer: {
          const t = this.q.peek(8)
          if (!t) {
            if (ending) throw this.error('truncated member trailer', this.q.position)
            return
          }
          const crc = t.readUInt32LE(0)
          const isize = t.readUInt32LE(4)
          const size = this.out - this.memberOut
          if (crc !== this.crc >>> 0) throw this.error(`CRC-32 mismatch in member ${this.segments.length} (stored ${crc.toString(16)}, computed ${(this.crc >>> 0).toString(16)})`, this.q.position)
          if (isize !== size % 2 ** 32) throw this.error(`size mismatch in member ${this.segments.length} (stored ${isize}, decompressed ${size})`, this.q.position)
          this.q.skip(8)
          this.state = State.Header
          break
        }
        case State.Padding: {
          // gzip ignores zeros after the last member (tape-style padding); anything else is garbage.
          if (!this.q.allZero()) throw this.error('garbage after the last member', this.q.position)
          this.q.skip(this.q.length)
          return
        }
      }
    }
  }

  /** Inflates queued input; true once the member's deflate stream has ended. */
  private async inflateQueued(out: OutputSink, y: Yielder): Promise<boolean> {
    const strm = this.strm!
    for (;;) {
      if (strm.avail_in === 0) {
        const piece = this.q.takePiece(IN_PIECE)
        if (!piece) {
          await this.flush(out)
          return false
        }
        this.pieceStart = this.q.position - piece.length
        strm.input = piece
        strm.next_in = 0
        strm.avail_in = piece.length
      }
      if (!this.obuf || strm.avail_out === 0) await this.flush(out)
      const ret = inflate(strm, Z_BLOCK)
      if (ret === Z_STREAM_END) {
        const seg = this.segments[this.segments.length - 1]!
        const input = strm.input as Buffer
        this.q.unshift(input.subarray(strm.next_in, strm.next_in + strm.avail_in))
        strm.avail_in = 0
        seg.end = this.q.position
        await this.flush(out)
        seg.outEnd = this.out
        inflateEnd(strm)
        this.strm = undefined
        this.obuf = undefined
        return true
      }
      if (ret !== Z_OK && ret !== Z_BUF_ERROR) throw this.error(strm.msg || `inflate error ${ret}`, this.pieceStart + strm.next_in)
      if ((strm.data_type & 128) && !(strm.data_type & 64)) await this.maybeCheckpoint(strm)
      await y.maybe()
    }
  }

  private async maybeCheckpoint(strm: ZStream): Promise<void> {
    const at = this.out + strm.next_out
    const since = at - this.lastCheckpoint
    if (since < this.spacing) return
    const bits = heldBits(strm)
    if (bits >= 8) return // not a clean boundary (never seen with zlib's decoder; be safe)
    if (bits !== 0 && since < this.unalignedAfter) return
    const bit = (this.pieceStart + strm.next_in) * 8 - bits
    const win = await this.o.storeWindow(windowOf(strm))
    this.addCheckpoint({ out: at, bit, seg: this.segments.length - 1, win })
  }

  private addCheckpoint(cp: Checkpoint): void {
    this.checkpoints.push(cp)
    this.lastCheckpoint = cp.out
  }

  /** Hands the output buffer's contents on and starts a fresh one. */
  private async flush(out: OutputSink): Promise<void> {
    const strm = this.strm!
    if (this.obuf && strm.next_out > 0) {
      const data = Buffer.from(this.obuf.buffer, this.obuf.byteOffset, strm.next_out)
      this.crc = crc32(this.crc, data, data.length, 0)
      this.out += data.length
      this.obuf = undefined
      await out(data)
    }
    if (!this.obuf) {
      this.obuf = new Uint8Array(OUT_CHUNK)
      strm.output = this.obuf
      strm.next_out = 0
      strm.avail_out = OUT_CHUNK
    }
  }
}
