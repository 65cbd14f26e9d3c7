/**
 * Types for the low-level zlib port inside pako 2.1 (CommonJS files under pako/lib/zlib), covering only what
 * src/compressed uses. pako's high-level `Inflate` hides the stream state; the raw functions expose it as
 * plain JS (hold/bits/window), which is what lets us stop at deflate block boundaries (Z_BLOCK) and resume
 * at a bit offset with a primed bit buffer and a 32 KiB dictionary (zlib's zran.c technique).
 */
declare module 'pako/lib/zlib/zstream.js' {
  class ZStream {
    input: Uint8Array | null
    next_in: number
    avail_in: number
    total_in: number
    output: Uint8Array | null
    next_out: number
    avail_out: number
    total_out: number
    msg: string
    data_type: number
    state: InflateState | null
  }
  /** Fields of pako's InflateState that we read or set (zlib's inflate_state). */
  interface InflateState {
    mode: number
    last: number
    wrap: number
    hold: number
    bits: number
    wbits: number
    wsize: number
    whave: number
    wnext: number
    window: Uint8Array | null
  }
  export = ZStream
}

declare module 'pako/lib/zlib/inflate.js' {
  import type ZStream from 'pako/lib/zlib/zstream.js'
  export function inflateInit2(strm: ZStream, windowBits: number): number
  export function inflate(strm: ZStream, flush: number): number
  export function inflateEnd(strm: ZStream): number
  export function inflateSetDictionary(strm: ZStream, dictionary: Uint8Array): number
}

declare module 'pako/lib/zlib/crc32.js' {
  function crc32(crc: number, buf: Uint8Array, len: number, pos: number): number
  export = crc32
}
