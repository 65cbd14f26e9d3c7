/**
 * tar+zstd layers. A zstd stream is a sequence of frames (RFC 8878), each decodable on its own, plus
 * skippable frames; the seekable format (zstd's contrib/seekable_format) adds a seek table in a final
 * skippable frame (magic 0x184D2A5E, footer magic 0x8F92EAB1) listing every frame's sizes.
 *
 * The indexing pass walks frame and block headers itself and feeds fzstd (pure JS) one block at a time, so
 * no synchronous slice decodes more than one block (at most 128 KiB of output) between event-loop turns.
 * Every frame start is a checkpoint (frames closer than `spacing / 4` are merged): random reads decode from
 * the frame holding the offset. A seek table, when present, is checked against the frames found (and noted in
 * the index); it cannot spare the pass, which is needed for the tar listing and the diffId anyway.
 *
 * A single-frame stream (what `zstd` writes by default) has one checkpoint: a read decodes from the start of
 * the layer up to its offset. The reader keeps its decoder for the next read (see decoder.ts), so reading a
 * file front to back stays linear, but random reads deep into a large single-frame layer are slow; producers
 * that want random access should write several frames (`cnaifs push --format tar+zstd` does).
 */
import { Decompress } from 'fzstd'
import { ByteQueue } from './byte-queue.js'
import type { VerifiedChunks } from './chunks.js'
import { Decoder } from './decoder.js'
import { DecompressionError, shortDigest } from './errors.js'
import type { Checkpoint, CompressedIndex, Segment } from './index-store.js'
import type { OutputSink, PassEngine } from './pass.js'
import { Yielder } from './sequential.js'

export const ZSTD_MAGIC = 0xfd2fb528
export const SKIPPABLE_MAGIC_MASK = 0xfffffff0
export const SKIPPABLE_MAGIC = 0x184d2a50
export const SEEKABLE_SKIPPABLE_MAGIC = 0x184d2a5e
export const SEEKABLE_FOOTER_MAGIC = 0x8f92eab1
const MAX_BLOCK = 128 * 1024
/**
 * Largest window (or single-segment frame) decoded: what `zstd -d` accepts without --memory (windowLog 27).
 * fzstd allocates the window up front, so a hostile header could otherwise ask for 2 GiB.
 */
const MAX_WINDOW = 128 * 1024 * 1024
/** A seek table larger than this is ignored rather than held in memory (that is ~1.4 million frames). */
const MAX_SEEK_TABLE = 16 * 1024 * 1024
const DEFAULT_ZSTD_SPACING = 4 * 1024 * 1024

interface FrameInfo {
  start: number
  out: number
  checksum: boolean
  contentSize?: number
}

interface WalkerHooks {
  frameStart(frame: FrameInfo): void
  frameEnd(frame: FrameInfo, end: number, outEnd: number): void
  output(data: Buffer): void
  seekTable?(content: Buffer): void
}

type WalkState = 'magic' | 'header' | 'block' | 'checksum' | 'skip'

/** Splits a zstd byte stream into units (frame header, block, checksum, skippable frame) and decodes them. */
class FrameWalker {
  state: WalkState = 'magic'
  private dec: Decompress | undefined
  private frame: FrameInfo | undefined
  private skipLeft = 0
  private seekTable: Buffer[] | undefined
  private seekTableBytes = 0
  private out: number

  constructor(readonly q: ByteQueue, out: number, private readonly hooks: WalkerHooks, private readonly what: () => string) {
    this.out = out
  }

  private error(message: string, cause?: unknown): DecompressionError {
    return new DecompressionError(`${this.what()}: zstd: ${message} (compressed byte ${this.q.position})`, { cause })
  }

  /** Processes one unit; false when more input is needed for it. */
  unit(): boolean {
    const q = this.q
    switch (this.state) {
      case 'magic': {
        const m = q.peek(4)
        if (!m) return false
        const magic = m.readUInt32LE(0)
        if (magic === ZSTD_MAGIC) { this.state = 'header'; return true }
        if (((magic & SKIPPABLE_MAGIC_MASK) >>> 0) === SKIPPABLE_MAGIC) {
          const h = q.peek(8)
          if (!h) return false
          q.skip(8)
          this.skipLeft = h.readUInt32LE(4)
          this.seekTable = magic === SEEKABLE_SKIPPABLE_MAGIC && this.hooks.seekTable && this.skipLeft <= MAX_SEEK_TABLE ? [] : undefined
          this.seekTableBytes = 0
          this.state = 'skip'
          return true
        }
        throw this.error(`not a zstd frame (magic 0x${magic.toString(16)})`)
      }
      case 'header': {
        const h5 = q.peek(5)
        if (!h5) return false
        const fhd = h5[4]!
        const fcsFlag = fhd >> 6
        const singleSegment = (fhd >> 5) & 1
        if (fhd & 0x08) throw this.error('reserved frame header bit set')
        const dictBytes = [0, 1, 2, 4][fhd & 3]!
        const fcsBytes = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!
        const size = 5 + (singleSegment ? 0 : 1) + dictBytes + fcsBytes
        const header = q.peek(size)
        if (!header) return false
        let p = 5 + (singleSegment ? 0 : 1)
        const dictId = dictBytes ? header.readUIntLE(p, dictBytes) : 0
        if (dictId !== 0) throw this.error(`frame needs dictionary ${dictId}, which the layer does not carry`)
        if (!singleSegment) {
          const wd = header[5]!
          const base = 2 ** (10 + (wd >> 3))
          if (base + (base / 8) * (wd & 7) > MAX_WINDOW) throw this.error(`window of ${base + (base / 8) * (wd & 7)} bytes exceeds the ${MAX_WINDOW}-byte limit`)
        }
        p += dictBytes
        let contentSize: number | undefined
        if (fcsBytes === 1) contentSize = header[p]!
        else if (fcsBytes === 2) contentSize = header.readUInt16LE(p) + 256
        else if (fcsBytes === 4) contentSize = header.readUInt32LE(p)
        else if (fcsBytes === 8) contentSize = Number(header.readBigUInt64LE(p))
        if (singleSegment && contentSize! > MAX_WINDOW) throw this.error(`single-segment frame of ${contentSize} bytes exceeds the ${MAX_WINDOW}-byte window limit`)
        const start = q.position
        q.skip(size)
        this.frame = { start, out: this.out, checksum: ((fhd >> 2) & 1) === 1, contentSize }
        this.dec = new Decompress((data) => {
          if (data.length === 0) return
          this.out += data.length
          this.hooks.output(Buffer.from(data.buffer, data.byteOffset, data.length))
        })
        this.hooks.frameStart(this.frame)
        this.push(header, false)
        this.state = 'block'
        return true
      }
      case 'block': {
        const bh = q.peek(3)
        if (!bh) return false
        const v = bh.readUIntLE(0, 3)
        const last = (v & 1) === 1
        const type = (v >> 1) & 3
        const bsize = v >>> 3
        if (type === 3) throw this.error('reserved block type')
        if (bsize > MAX_BLOCK) throw this.error(`block of ${bsize} bytes exceeds the 128 KiB maximum`)
        const block = q.peek(3 + (type === 1 ? 1 : bsize))
        if (!block) return false
        q.skip(block.length)
        this.push(block, last && !this.frame!.checksum)
        if (!last) return true
        if (this.frame!.checksum) this.state = 'checksum'
        else this.endFrame()
        return true
      }
      case 'checksum': {
        const c = q.peek(4)
        if (!c) return false
        q.skip(4)
        this.push(c, true)
        this.endFrame()
        return true
      }
      case 'skip': {
        if (this.skipLeft > 0) {
          const n = Math.min(this.skipLeft, q.length)
          if (n === 0) return false
          if (this.seekTable) {
            const b = q.take(n)!
            this.seekTable.push(b)
            this.seekTableBytes += n
          } else {
            q.skip(n)
          }
          this.skipLeft -= n
          if (this.skipLeft > 0) return false
        }
        if (this.seekTable) this.hooks.seekTable?.(Buffer.concat(this.seekTable, this.seekTableBytes))
        this.seekTable = undefined
        this.state = 'magic'
        return true
      }
    }
  }

  private push(data: Buffer, final: boolean): void {
    try {
      this.dec!.push(data, final)
    } catch (err) {
      throw this.error(`data error: ${(err as Error).message}`, err)
    }
  }

  private endFrame(): void {
    const f = this.frame!
    const produced = this.out - f.out
    if (f.contentSize !== undefined && produced !== f.contentSize) throw this.error(`frame decoded to ${produced} bytes, its header says ${f.contentSize}`)
    this.hooks.frameEnd(f, this.q.position, this.out)
    this.dec = undefined
    this.frame = undefined
    this.state = 'magic'
  }

  /** At the end of input: the stream must end between frames. */
  checkEnd(): void {
    if (this.state !== 'magic' || this.q.length > 0) throw this.error(this.state === 'magic' ? 'trailing bytes that are not a frame' : 'truncated frame')
  }
}

export interface ZstdEngineOptions {
  digest: string
  /** Frames starting closer than spacing/4 to the previous checkpoint are not checkpoints themselves. */
  spacing?: number
}

export class ZstdIndexEngine implements PassEngine {
  readonly segments: Segment[] = []
  readonly checkpoints: Checkpoint[] = []
  seekTable: boolean | undefined
  private readonly q = new ByteQueue(0)
  private readonly walker: FrameWalker
  private pending: Buffer[] = []
  private lastCheckpoint = -Infinity
  private table: Buffer | undefined
  private readonly spacing: number

  constructor(private readonly o: ZstdEngineOptions) {
    this.spacing = o.spacing ?? DEFAULT_ZSTD_SPACING
    this.walker = new FrameWalker(this.q, 0, {
      frameStart: (f) => {
        this.segments.push({ in: f.start, end: -1, out: f.out, outEnd: -1 })
        if (f.out - this.lastCheckpoint >= this.spacing / 4) {
          this.checkpoints.push({ out: f.out, bit: f.start * 8, seg: this.segments.length - 1 })
          this.lastCheckpoint = f.out
        }
      },
      frameEnd: (_f, end, outEnd) => {
        const s = this.segments[this.segments.length - 1]!
        s.end = end
        s.outEnd = outEnd
      },
      output: (d) => this.pending.push(d),
      seekTable: (content) => { this.table = content },
    }, () => `layer blob ${shortDigest(o.digest)}`)
  }

  feed(data: Buffer): void {
    this.q.push(data)
  }

  async run(out: OutputSink, y: Yielder): Promise<void> {
    while (this.walker.unit()) {
      for (const d of this.pending.splice(0)) await out(d)
      await y.maybe()
    }
  }

  async finish(out: OutputSink, y: Yielder): Promise<void> {
    await this.run(out, y)
    this.walker.checkEnd()
    if (this.segments.length === 0) throw new DecompressionError(`layer blob ${shortDigest(this.o.digest)}: zstd: no frame in the layer`)
    if (this.table) this.seekTable = seekTableMatches(this.table, this.segments)
  }
}

/** True when a seek table (skippable frame content) lists exactly the frames found. */
export function seekTableMatches(content: Buffer, frames: Segment[]): boolean {
  if (content.length < 9 || content.readUInt32LE(content.length - 4) !== SEEKABLE_FOOTER_MAGIC) return false
  const count = content.readUInt32LE(content.length - 9)
  const descriptor = content[content.length - 5]!
  const entry = descriptor & 0x80 ? 12 : 8
  if (count !== frames.length || count * entry + 9 !== content.length) return false
  for (let i = 0; i < count; i++) {
    const c = content.readUInt32LE(i * entry)
    const d = content.readUInt32LE(i * entry + 4)
    const f = frames[i]!
    if (c !== f.end - f.in || d !== f.outEnd - f.out) return false
  }
  return true
}

/** A seek table for the given frames (compressed and decompressed sizes), as the seekable format writes it. */
export function seekTableFrame(frames: { compressed: number; decompressed: number }[]): Buffer {
  const body = Buffer.alloc(frames.length * 8 + 9)
  frames.forEach((f, i) => {
    body.writeUInt32LE(f.compressed, i * 8)
    body.writeUInt32LE(f.decompressed, i * 8 + 4)
  })
  body.writeUInt32LE(frames.length, frames.length * 8)
  body[frames.length * 8 + 4] = 0 // descriptor: no checksums
  body.writeUInt32LE(SEEKABLE_FOOTER_MAGIC, frames.length * 8 + 5)
  const head = Buffer.alloc(8)
  head.writeUInt32LE(SEEKABLE_SKIPPABLE_MAGIC, 0)
  head.writeUInt32LE(body.length, 4)
  return Buffer.concat([head, body])
}

/** Random reads of a tar+zstd layer from a frame-start checkpoint. */
export class ZstdDecoder extends Decoder {
  private readonly q: ByteQueue
  private readonly walker: FrameWalker
  private readonly y = new Yielder(8)
  private readonly ratio: number
  private target = 0

  constructor(private readonly index: CompressedIndex, private readonly chunks: VerifiedChunks, cp: Checkpoint) {
    super(cp.out)
    this.q = new ByteQueue(cp.bit / 8)
    this.ratio = index.size > 0 ? index.compressed.size / index.size : 1
    this.walker = new FrameWalker(this.q, cp.out, { frameStart: () => {}, frameEnd: () => {}, output: (d) => this.emit(d) }, () => this.describe())
  }

  protected describe(): string {
    return `layer blob ${shortDigest(this.index.compressed.digest)} (zstd)`
  }

  override decodeTo(end: number, sink: (data: Buffer, at: number) => void, signal?: AbortSignal): Promise<void> {
    this.target = end
    return super.decodeTo(end, sink, signal)
  }

  protected async step(signal?: AbortSignal): Promise<boolean> {
    const goal = this.produced + 256 * 1024
    this.y.reset()
    for (;;) {
      if (this.walker.unit()) {
        if (this.produced >= goal) return true
        await this.y.maybe()
        continue
      }
      // The unit needs more input.
      const inEnd = this.q.position + this.q.length
      if (inEnd >= this.index.compressed.size) {
        this.walker.checkEnd()
        return false
      }
      const more = this.target > this.produced ? (this.target - this.produced) * this.ratio * 1.1 + 64 * 1024 : 0
      this.q.push(await this.chunks.piece(inEnd, this.index.compressed.size, 256 * 1024, more, signal))
      this.y.reset()
      if (this.produced > this.position) return true
    }
  }

  close(): void {}
}
