/**
 * gzip container details shared by the indexing pass and the readers: member headers (RFC 1952) and the
 * pako raw-inflate plumbing (state window, bit priming).
 */
import * as pakoInflate from 'pako/lib/zlib/inflate.js'
import ZStream from 'pako/lib/zlib/zstream.js'

export const Z_OK = 0
export const Z_STREAM_END = 1
export const Z_NEED_DICT = 2
export const Z_BUF_ERROR = -5
export const Z_NO_FLUSH = 0
export const Z_BLOCK = 5

/** Longest member header we accept (FEXTRA is at most 64 KiB; names and comments are short in practice). */
export const MAX_GZIP_HEADER = 128 * 1024

const FHCRC = 2
const FEXTRA = 4
const FNAME = 8
const FCOMMENT = 16
const RESERVED = 0xe0

/**
 * Length of the member header at the start of `b`, 'more' if `b` ends before it does, or a reason it is
 * not a gzip header.
 */
export function gzipHeaderLength(b: Buffer): number | 'more' | { bad: string } {
  if (b.length < 10) {
    if (b.length >= 1 && b[0] !== 0x1f) return { bad: 'not a gzip member (bad magic)' }
    if (b.length >= 2 && b[1] !== 0x8b) return { bad: 'not a gzip member (bad magic)' }
    return 'more'
  }
  if (b[0] !== 0x1f || b[1] !== 0x8b) return { bad: 'not a gzip member (bad magic)' }
  if (b[2] !== 8) return { bad: `unknown gzip compression method ${b[2]}` }
  const flags = b[3]!
  if (flags & RESERVED) return { bad: `reserved gzip header flags set (0x${flags.toString(16)})` }
  let p = 10
  if (flags & FEXTRA) {
    if (b.length < p + 2) return 'more'
    p += 2 + b.readUInt16LE(p)
  }
  for (const f of [FNAME, FCOMMENT]) {
    if (!(flags & f)) continue
    const nul = b.indexOf(0, p)
    if (nul === -1) return b.length >= MAX_GZIP_HEADER ? { bad: 'gzip header name or comment too long' } : 'more'
    p = nul + 1
  }
  if (flags & FHCRC) p += 2
  return p <= b.length ? p : 'more'
}

/** A pako raw-inflate stream (windowBits -15: no zlib/gzip wrapper, 32 KiB window). */
export function rawInflater(dictionary?: Uint8Array, prime?: { value: number; bits: number }): ZStream {
  const strm = new ZStream()
  if (pakoInflate.inflateInit2(strm, -15) !== Z_OK) throw new Error('pako inflateInit2 failed')
  if (dictionary && dictionary.length && pakoInflate.inflateSetDictionary(strm, dictionary) !== Z_OK) throw new Error('pako inflateSetDictionary failed')
  if (prime && prime.bits) {
    // pako has no inflatePrime; its state is plain JS, so do what zlib's inflatePrime does.
    const st = strm.state!
    st.hold += (prime.value & ((1 << prime.bits) - 1)) << st.bits
    st.bits += prime.bits
  }
  return strm
}

export const inflate = pakoInflate.inflate
export const inflateEnd = pakoInflate.inflateEnd

/** The last (up to) 32 KiB of output as inflate keeps it, oldest byte first (what zlib's inflateGetDictionary returns). */
export function windowOf(strm: ZStream): Buffer {
  const st = strm.state!
  if (!st.window || st.whave === 0) return Buffer.alloc(0)
  const out = Buffer.allocUnsafe(st.whave)
  if (st.whave < st.wsize) {
    out.set(st.window.subarray(0, st.whave))
  } else {
    out.set(st.window.subarray(st.wnext, st.wsize), 0)
    out.set(st.window.subarray(0, st.wnext), st.wsize - st.wnext)
  }
  return out
}

/** Unused bits held by inflate (at a block boundary: the high bits of the last byte taken, < 8). */
export function heldBits(strm: ZStream): number {
  return strm.state!.bits
}

export type { ZStream }
