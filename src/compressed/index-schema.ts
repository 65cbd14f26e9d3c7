/**
 * What a stored checkpoint index header must look like to be used: field types, and every range it names
 * (windows, chunk hashes, segments, tar entries) inside the bounds it declares. The .bin's bytes are
 * checked separately against `binSha256` by the store.
 */
import type { TarEntry } from '../index/tar.js'
import { unsealJson } from '../util/sealed-json.js'
import {
  SchemaError, arrayOf, boolean, count, fail, finite, literal, matching, object, oneOf, string, tupleOf, type Check,
} from '../util/validate.js'
import type { CompressedIndexHeader } from './index-store.js'
import { VERIFY_CHUNK } from './sequential.js'

/** 2: sealed with a checksum and the .bin's sha256; 1: older headers without either, still read. */
export const COMPRESSED_INDEX_VERSION = 2
const READABLE_VERSIONS = [1, 2] as const
const HASH_BYTES = 32

const DIGEST = matching(/^sha256:[a-f0-9]{64}$/, 'a sha256 digest')
const entryName: Check<string> = (v, f) => {
  const s = string(v, f)
  if (!s || s.startsWith('/') || s.includes('\0') || s.split('/').includes('..')) fail(f, 'a relative path inside the layer', v)
  return s
}
const tarEntry: Check<TarEntry> = object({
  name: entryName, type: oneOf(['file', 'directory', 'symlink', 'hardlink']), size: count, dataOffset: count,
  mode: count, uid: count, gid: count, mtime: finite,
}, { linkname: string })
const checkpoint = object({ out: count, bit: count, seg: count }, { win: tupleOf(count, 2) })

const headerShape = object({
  version: oneOf(READABLE_VERSIONS), format: oneOf(['gzip', 'zstd']), compressed: object({ digest: DIGEST, size: count }),
  diffId: DIGEST, size: count, entries: arrayOf(tarEntry), segments: arrayOf(tupleOf(count, 4)), checkpoints: arrayOf(checkpoint),
  chunkSize: literal(VERIFY_CHUNK), hashes: tupleOf(count, 2), binBytes: count, createdAt: string,
}, { seekTable: boolean, binSha256: DIGEST })

/** Parses and checks the .json header of the compressed index of blob `digest`. */
export function parseCompressedIndexHeader(text: string, digest: string): CompressedIndexHeader {
  const { doc, sealed } = unsealJson(text)
  if (doc.version !== 1 && !sealed) throw new SchemaError('checksum', 'missing')
  const h = headerShape(doc, '') as CompressedIndexHeader
  if (h.version !== 1 && !h.binSha256) throw new SchemaError('binSha256', 'missing')
  if (h.compressed.digest !== digest) throw new SchemaError('compressed.digest', `is ${h.compressed.digest}, but the file is named for ${digest}`)
  const within = (field: string, [at, length]: number[], bound: number, what: string) => {
    if (at! + length! > bound) throw new SchemaError(field, `[${at}, +${length}] runs past the end of ${what} (${bound} bytes)`)
  }
  within('hashes', h.hashes, h.binBytes, 'the .bin')
  const chunks = Math.ceil(h.compressed.size / h.chunkSize)
  if (h.hashes[1] !== chunks * HASH_BYTES) throw new SchemaError('hashes', `holds ${h.hashes[1]} bytes, but ${chunks} chunks need ${chunks * HASH_BYTES}`)
  h.segments.forEach(([i, e, o, oe], n) => {
    if (!(i! <= e! && e! <= h.compressed.size && o! <= oe! && oe! <= h.size)) throw new SchemaError(`segments[${n}]`, 'is not inside the blob and its content')
  })
  h.checkpoints.forEach((cp, n) => {
    if (cp.seg >= h.segments.length) throw new SchemaError(`checkpoints[${n}].seg`, `names segment ${cp.seg} of ${h.segments.length}`)
    if (cp.out > h.size || cp.bit > h.compressed.size * 8) throw new SchemaError(`checkpoints[${n}]`, 'lies outside the blob or its content')
    if (cp.win) within(`checkpoints[${n}].win`, cp.win, h.binBytes, 'the .bin')
  })
  h.entries.forEach((e, n) => {
    if (e.dataOffset + e.size > h.size) throw new SchemaError(`entries[${n}]`, `bytes ${e.dataOffset}+${e.size} run past the end of the content (${h.size} bytes)`)
  })
  return h
}
