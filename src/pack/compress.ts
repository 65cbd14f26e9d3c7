/**
 * Compression for `cnaifs push --format tar+gzip|tar+zstd`.
 *
 * - gzip: Node's zlib at level 6 (what `gzip` does by default): one member, random access comes from the
 *   reader's checkpoint index.
 * - zstd: Node 20 has no zstd, so the `zstd` command (Debian package zstd) compresses each 2 MiB of the tar
 *   as its own frame (level 3, content size and checksum in every frame header), and a seek table in the
 *   zstd seekable format closes the stream. Plain `zstd` writes one frame, which can only be read from the
 *   start; independent frames let a reader start at any 2 MiB boundary, so a read decodes at most 2 MiB more
 *   than it returns. Any zstd decoder reads the result (concatenated frames plus a skippable frame are
 *   standard zstd).
 */
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { once } from 'node:events'
import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGzip } from 'node:zlib'
import { seekTableFrame } from '../compressed/zstd.js'
import { CnaifsError } from '../util/errors.js'

export type Compression = 'gzip' | 'zstd'

/** Uncompressed bytes per zstd frame. */
export const ZSTD_FRAME_BYTES = 2 * 1024 * 1024

export interface CompressedBlob {
  digest: string
  size: number
}

/** Compresses `content` into the file at `path`; returns the compressed blob's digest and size. */
export async function compressLayer(content: Readable, compression: Compression, path: string): Promise<CompressedBlob> {
  const hash = createHash('sha256')
  let size = 0
  const file = createWriteStream(path)
  const sink = async (chunks: AsyncIterable<Buffer>) => {
    for await (const c of chunks) {
      hash.update(c)
      size += c.length
      if (!file.write(c)) await once(file, 'drain')
    }
  }
  try {
    if (compression === 'gzip') await pipeline(content, createGzip({ level: 6 }), sink)
    else await sink(zstdFrames(content))
  } catch (err) {
    file.destroy()
    throw err
  }
  file.end()
  await once(file, 'finish')
  return { digest: 'sha256:' + hash.digest('hex'), size }
}

/** One zstd frame per ZSTD_FRAME_BYTES of input, then the seek table. */
async function* zstdFrames(content: Readable): AsyncGenerator<Buffer> {
  const frames: { compressed: number; decompressed: number }[] = []
  for await (const piece of rechunk(content, ZSTD_FRAME_BYTES)) {
    const frame = await zstdCompress(piece)
    frames.push({ compressed: frame.length, decompressed: piece.length })
    yield frame
  }
  if (frames.length === 0) {
    const frame = await zstdCompress(Buffer.alloc(0))
    frames.push({ compressed: frame.length, decompressed: 0 })
    yield frame
  }
  yield seekTableFrame(frames)
}

async function* rechunk(stream: Readable, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = []
  let have = 0
  for await (const chunk of stream) {
    let c = chunk as Buffer
    while (c.length > 0) {
      const take = Math.min(size - have, c.length)
      parts.push(c.subarray(0, take))
      have += take
      c = c.subarray(take)
      if (have === size) {
        yield Buffer.concat(parts, have)
        parts = []
        have = 0
      }
    }
  }
  if (have > 0) yield Buffer.concat(parts, have)
}

function zstdCompress(data: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn('zstd', ['-q', '-3', '-c', `--stream-size=${data.length}`], { stdio: ['pipe', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (c: Buffer) => out.push(c))
    child.stderr.on('data', (c: Buffer) => err.push(c))
    child.stdin.on('error', () => {}) // reported through the exit status
    child.once('error', (e: NodeJS.ErrnoException) => {
      reject(e.code === 'ENOENT' ? new CnaifsError('EUSAGE', '--format tar+zstd needs the zstd command (Debian: apt-get install zstd)') : e)
    })
    child.once('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out))
      else reject(new Error(`zstd exited with ${code}: ${Buffer.concat(err).toString().trim()}`))
    })
    child.stdin.end(data)
  })
}
