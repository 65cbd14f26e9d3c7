/** Compressed bytes waiting to be parsed, as a list of buffers with absolute stream positions. */
export class ByteQueue {
  private chunks: Buffer[] = []
  /** Bytes queued. */
  length = 0
  /** Absolute position (in the blob) of the first queued byte. */
  position: number

  constructor(position = 0) {
    this.position = position
  }

  push(data: Buffer): void {
    if (data.length === 0) return
    this.chunks.push(data)
    this.length += data.length
  }

  /** Puts bytes back in front (the unused tail of a piece that was taken). */
  unshift(data: Buffer): void {
    if (data.length === 0) return
    this.chunks.unshift(data)
    this.length += data.length
    this.position -= data.length
  }

  /** The first `n` bytes, contiguous, without consuming them; undefined if fewer are queued. */
  peek(n: number): Buffer | undefined {
    if (n > this.length) return undefined
    const first = this.chunks[0]
    if (first && first.length >= n) return first.subarray(0, n)
    const out = Buffer.allocUnsafe(n)
    let filled = 0
    for (const c of this.chunks) {
      const take = Math.min(c.length, n - filled)
      c.copy(out, filled, 0, take)
      filled += take
      if (filled === n) break
    }
    return out
  }

  /** Consumes and returns `n` bytes (contiguous); undefined if fewer are queued. */
  take(n: number): Buffer | undefined {
    const out = this.peek(n)
    if (out) this.skip(n)
    return out
  }

  /** Consumes up to `max` bytes from the first buffer (no copy). */
  takePiece(max: number): Buffer | undefined {
    const first = this.chunks[0]
    if (!first) return undefined
    const n = Math.min(max, first.length)
    const piece = first.subarray(0, n)
    if (n === first.length) this.chunks.shift()
    else this.chunks[0] = first.subarray(n)
    this.length -= n
    this.position += n
    return piece
  }

  /** Drops up to `n` bytes; returns how many were dropped. */
  skip(n: number): number {
    let left = Math.min(n, this.length)
    const dropped = left
    while (left > 0) {
      const first = this.chunks[0]!
      if (first.length <= left) {
        this.chunks.shift()
        left -= first.length
      } else {
        this.chunks[0] = first.subarray(left)
        left = 0
      }
    }
    this.length -= dropped
    this.position += dropped
    return dropped
  }

  /** True when every queued byte is zero (padding after the last gzip member). */
  allZero(): boolean {
    return this.chunks.every((c) => c.every((b) => b === 0))
  }
}
