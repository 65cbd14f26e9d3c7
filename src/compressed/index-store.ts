/**
 * The checkpoint index of a compressed layer, built once per compressed blob and kept forever under
 * `<cacheDir>/compressed/<blob hex>.json` (header: entries, segments, checkpoints, diffId) and `.bin` (the
 * checkpoints' 32 KiB windows, each deflated, then one sha256 per VERIFY_CHUNK of compressed bytes). Both are
 * written to a temp file, fsynced and renamed; the .bin goes first, so a .json always has its .bin, and the
 * .json carries a checksum of itself and the sha256 of its .bin, both checked when loaded. Building is
 * deterministic (same blob, same bytes), so two processes indexing the same blob at once write equal files.
 */
import { createHash } from 'node:crypto'
import { open, rename, rm, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { inflateRawSync, deflateRawSync } from 'node:zlib'
import type { TarEntry } from '../index/tar.js'
import { PRIVATE_FILE_MODE, fsyncDir, mkdirPrivate, tempPathIn, writeFileAtomic } from '../util/atomic-write.js'
import { digestHex } from '../util/digest.js'
import { errorMessage } from '../util/errors.js'
import { sealJson } from '../util/sealed-json.js'
import { readStored, type Stored } from '../util/stored.js'
import { COMPRESSED_INDEX_VERSION, parseCompressedIndexHeader } from './index-schema.js'

export { COMPRESSED_INDEX_VERSION }

export type CompressedFormat = 'gzip' | 'zstd'

export interface BlobRef {
  digest: string
  size: number
}

/**
 * A gzip member's deflate data, or a zstd frame (skippable frames are not segments). `in`/`end`: compressed
 * byte range; `out`/`outEnd`: the uncompressed range it produces.
 */
export interface Segment {
  in: number
  end: number
  out: number
  outEnd: number
}

/** A place decompression can start: `out` in uncompressed bytes, `bit` in the compressed blob. */
export interface Checkpoint {
  out: number
  /** Bit position: a multiple of 8 at member/frame starts and at byte-aligned deflate block boundaries. */
  bit: number
  /** Index of the segment (member or frame) it lies in. */
  seg: number
  /** gzip, inside a member: the member's output before `out` (up to 32 KiB), deflated, at [offset, length) of the .bin. */
  win?: [number, number]
}

export interface CompressedIndexHeader {
  /** 2: sealed (checksum) with binSha256; 1: written before either existed. */
  version: 1 | 2
  format: CompressedFormat
  compressed: BlobRef
  /** sha256 of the uncompressed content (the layer's diffId) and its size. */
  diffId: string
  size: number
  entries: TarEntry[]
  segments: [number, number, number, number][]
  checkpoints: Checkpoint[]
  /** Compressed bytes are checked against these hashes in `chunkSize` chunks: [offset, length] in the .bin. */
  chunkSize: number
  hashes: [number, number]
  binBytes: number
  /** sha256 of the whole .bin (version 2). */
  binSha256?: string
  /** zstd: the stream carried a seek table that agreed with its frames. */
  seekTable?: boolean
  createdAt: string
}

export interface CompressedIndex extends Omit<CompressedIndexHeader, 'segments'> {
  segments: Segment[]
  chunkHashes: Buffer
  /** The window stored for a checkpoint (empty when it has none). */
  readWindow(cp: Checkpoint): Promise<Buffer>
}

export class CompressedIndexStore {
  readonly dir: string
  constructor(cacheDir: string) {
    this.dir = join(cacheDir, 'compressed')
  }

  private paths(digest: string): { json: string; bin: string } {
    const hex = digestHex(digest)
    return { json: join(this.dir, `${hex}.json`), bin: join(this.dir, `${hex}.bin`) }
  }

  /** The stored index of a compressed blob: ok, absent, or invalid (the caller rebuilds it, with a warning). */
  async read(digest: string): Promise<Stored<CompressedIndex>> {
    const p = this.paths(digest)
    const header = await readStored(p.json, (text) => parseCompressedIndexHeader(text, digest))
    if (header.state !== 'ok') return header
    const h = header.value
    let bin: Buffer
    try {
      bin = await readBin(p.bin, h.binBytes)
    } catch (err) {
      return { state: 'invalid', path: p.bin, reason: errorMessage(err) }
    }
    if (h.binSha256 && 'sha256:' + createHash('sha256').update(bin).digest('hex') !== h.binSha256) {
      return { state: 'invalid', path: p.bin, reason: 'its content does not match the sha256 recorded in the .json: the file is damaged' }
    }
    return { state: 'ok', path: p.json, value: fromHeader(h, Buffer.from(bin.subarray(h.hashes[0], h.hashes[0] + h.hashes[1])), p.bin) }
  }

  /** The stored index of a compressed blob when it is there and valid. */
  async load(digest: string): Promise<CompressedIndex | undefined> {
    const s = await this.read(digest)
    return s.state === 'ok' ? s.value : undefined
  }

  /** Starts writing an index: windows are appended to a temp .bin as the pass finds them. */
  async writer(digest: string): Promise<IndexWriter> {
    await mkdirPrivate(this.dir)
    const p = this.paths(digest)
    const tmp = tempPathIn(this.dir)
    return new IndexWriter(await open(tmp, 'wx', PRIVATE_FILE_MODE), tmp, p.bin, p.json)
  }

  async remove(digest: string): Promise<void> {
    const p = this.paths(digest)
    await rm(p.json, { force: true })
    await rm(p.bin, { force: true })
  }
}

export class IndexWriter {
  private written = 0
  private readonly binHash = createHash('sha256')
  constructor(private readonly fh: FileHandle, private readonly tmp: string, private readonly bin: string, private readonly json: string) {}

  /** Stores a window (deflated); returns where it went. */
  async appendWindow(window: Buffer): Promise<[number, number]> {
    const packed = deflateRawSync(window, { level: 6 })
    await this.fh.write(packed, 0, packed.length, this.written)
    this.binHash.update(packed)
    const at: [number, number] = [this.written, packed.length]
    this.written += packed.length
    return at
  }

  /** Appends the chunk hashes, renames the .bin into place, then writes the .json header. */
  async finish(header: Omit<CompressedIndexHeader, 'hashes' | 'binBytes' | 'binSha256' | 'version' | 'createdAt'>, chunkHashes: Buffer): Promise<CompressedIndex> {
    await this.fh.write(chunkHashes, 0, chunkHashes.length, this.written)
    this.binHash.update(chunkHashes)
    const full: CompressedIndexHeader = {
      version: COMPRESSED_INDEX_VERSION,
      ...header,
      hashes: [this.written, chunkHashes.length],
      binBytes: this.written + chunkHashes.length,
      binSha256: 'sha256:' + this.binHash.digest('hex'),
      createdAt: new Date().toISOString(),
    }
    await this.fh.sync()
    await this.fh.close()
    await rename(this.tmp, this.bin)
    await fsyncDir(join(this.bin, '..'))
    await writeFileAtomic(this.json, sealJson(full))
    return fromHeader(full, chunkHashes, this.bin)
  }

  /** Drops the temp file (a failed pass). */
  async abort(): Promise<void> {
    await this.fh.close().catch(() => {})
    await rm(this.tmp, { force: true })
  }
}

function fromHeader(h: CompressedIndexHeader, chunkHashes: Buffer, binPath: string): CompressedIndex {
  return {
    ...h,
    segments: h.segments.map(([i, e, o, oe]) => ({ in: i, end: e, out: o, outEnd: oe })),
    chunkHashes,
    readWindow: async (cp) => {
      if (!cp.win) return Buffer.alloc(0)
      const fh = await open(binPath, 'r')
      try {
        return inflateRawSync(await readAt(fh, cp.win[0], cp.win[1]))
      } finally {
        await fh.close()
      }
    },
  }
}

export function segmentTuples(segments: Segment[]): [number, number, number, number][] {
  return segments.map((s) => [s.in, s.end, s.out, s.outEnd])
}

/** The whole .bin, which must be exactly `bytes` long. */
async function readBin(path: string, bytes: number): Promise<Buffer> {
  const fh = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new Error(err.code === 'ENOENT' ? 'missing (its .json is there)' : `cannot be read (${err.code ?? err.message})`)
  })
  try {
    const size = (await fh.stat()).size
    if (size !== bytes) throw new Error(`holds ${size} bytes, its .json says ${bytes}`)
    return await readAt(fh, 0, bytes)
  } finally {
    await fh.close()
  }
}

async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length)
  let filled = 0
  while (filled < length) {
    const { bytesRead } = await fh.read(buf, filled, length - filled, offset + filled)
    if (bytesRead === 0) throw new Error(`index file ends early (${offset + filled} of ${offset + length})`)
    filled += bytesRead
  }
  return buf
}
