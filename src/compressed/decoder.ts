/**
 * What random reads decompress with: a decoder started at a checkpoint that delivers uncompressed bytes in
 * order. Output past what a read asked for is kept (`carry`) so the next read that starts there continues
 * with this decoder instead of going back to a checkpoint (sequential reads, single-frame zstd).
 */
import { DeadlineError } from '../registry/errors.js'
import { DecompressionError } from './errors.js'

/** Receives `data`, which starts at uncompressed offset `at`. */
export type Sink = (data: Buffer, at: number) => void

/** Past this much carried output a decoder is not kept for reuse. */
const MAX_CARRY = 16 * 1024 * 1024

export abstract class Decoder {
  /** Uncompressed offset of the next byte decodeTo() delivers. */
  position: number
  /** False once it failed, hit the end, or holds too much: not to be reused. */
  reusable = true
  private carry: Buffer[] = []
  private carried = 0

  constructor(position: number) {
    this.position = position
  }

  /** Produces some output through emit(); false at the end of the stream. */
  protected abstract step(signal?: AbortSignal): Promise<boolean>
  /** For messages: which layer. */
  protected abstract describe(): string
  abstract close(): void

  /** Uncompressed bytes produced so far (delivered or carried). */
  protected get produced(): number {
    return this.position + this.carried
  }

  protected emit(data: Buffer): void {
    if (data.length === 0) return
    this.carry.push(data)
    this.carried += data.length
  }

  /** Delivers bytes [position, end) to `sink`, in order. */
  async decodeTo(end: number, sink: Sink, signal?: AbortSignal): Promise<void> {
    try {
      this.drain(end, sink)
      while (this.position < end) {
        if (signal?.aborted) throw new DeadlineError(`${this.describe()}: read aborted (deadline)`)
        const more = await this.step(signal)
        this.drain(end, sink)
        if (!more && this.position < end) {
          this.reusable = false
          throw new DecompressionError(`${this.describe()}: the stream ends at uncompressed byte ${this.position}, before ${end}`)
        }
      }
      if (this.carried > MAX_CARRY) this.reusable = false
    } catch (err) {
      this.reusable = false
      throw err
    }
  }

  private drain(end: number, sink: Sink): void {
    while (this.carry.length && this.position < end) {
      const c = this.carry[0]!
      const room = end - this.position
      if (c.length <= room) {
        this.carry.shift()
        this.carried -= c.length
        sink(c, this.position)
        this.position += c.length
      } else {
        sink(c.subarray(0, room), this.position)
        this.carry[0] = c.subarray(room)
        this.carried -= room
        this.position += room
      }
    }
  }
}
