/**
 * The data path below FUSE: the blob cache with its fetch workers and the file reader, against a real
 * registry behind the counting/fault proxy. No mount: reads are FileReader.read() calls, and a CachedRange
 * answer is checked by reading that range of the data file, exactly what the FUSE binding replies with.
 */
import { randomBytes } from 'node:crypto'
import { mkdir, open, readFile, stat, writeFile } from 'node:fs/promises'
import { execFile, spawn } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, afterEach, describe, expect, inject, it } from 'vitest'
import type {} from '../helpers/global-setup.js'
import { BlobCache, CorruptBlobError } from '../../src/cache/blob-cache.js'
import { FileReader } from '../../src/cache/file-reader.js'
import { isCachedRange, type BlobRef, type BlobSource, type FileExtent, type ReadResult } from '../../src/cache/types.js'
import { RegistryClient } from '../../src/registry/client.js'
import { parseReference } from '../../src/registry/reference.js'
import { sha256Digest } from '../../src/util/digest.js'
import { startProxy, type FaultProxy } from '../helpers/proxy.js'
import { REPO_ROOT, cleanupTempDirs, seededBytes, tempDir, uniqueRepo } from '../helpers/cli.js'

const execFileAsync = promisify(execFile)
const reg = inject('registry')
const MiB = 1024 * 1024

const proxies: FaultProxy[] = []
const closers: Array<() => Promise<void>> = []

afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c().catch(() => undefined)
  for (const p of proxies.splice(0)) await p.stop()
})
afterAll(async () => {
  await cleanupTempDirs()
})

/** Pushes `data` as a blob of a fresh repository; returns the blob and the repository's reference. */
async function pushBlob(data: Buffer): Promise<{ blob: BlobRef; repo: string }> {
  const repo = uniqueRepo('blob-cache')
  const client = new RegistryClient({ credentialSource: { files: [] } })
  try {
    const digest = sha256Digest(data)
    await client.pushBlob(parseReference(`${reg.host}/${repo}:x`), digest, data.length, data)
    return { blob: { digest, size: data.length }, repo }
  } finally {
    await client.close()
  }
}

interface Harness {
  cache: BlobCache
  reader: FileReader
  proxy: FaultProxy
  cacheDir: string
  source: BlobSource
}

async function harness(repo: string, opts: { cacheDir?: string; maxDiskBytes?: number; readTimeoutMs?: number; proxy?: FaultProxy } = {}): Promise<Harness> {
  const proxy = opts.proxy ?? await startProxy(reg.url)
  if (!opts.proxy) proxies.push(proxy)
  const cacheDir = opts.cacheDir ?? await tempDir('cnaifs-blobcache-')
  const cache = new BlobCache({ cacheDir, client: { credentialSource: { files: [] }, retries: 1 }, maxDiskBytes: opts.maxDiskBytes, workers: 2 })
  await cache.init()
  closers.push(() => cache.close())
  const source: BlobSource = { kind: 'registry', reference: parseReference(`${proxy.host}/${repo}:x`) }
  const reader = new FileReader({ cache, sourceFor: () => source, readTimeoutMs: opts.readTimeoutMs ?? 20_000 })
  return { cache, reader, proxy, cacheDir, source }
}

/** The bytes a read answered: a CachedRange is read from the data file, as the FUSE binding would. */
async function bytesOf(r: ReadResult): Promise<Buffer> {
  if (!isCachedRange(r)) return r
  const out = Buffer.alloc(r.length)
  const { readSync } = await import('node:fs')
  let done = 0
  while (done < r.length) {
    const n = readSync(r.fd, out, done, r.length - done, r.position + done)
    if (n === 0) break
    done += n
  }
  return out.subarray(0, done)
}

async function readAll(reader: FileReader, extent: FileExtent, chunk = MiB): Promise<Buffer> {
  const h = reader.open(extent)
  try {
    const parts: Buffer[] = []
    for (let off = 0; off < extent.size; off += chunk) parts.push(await bytesOf(await reader.read(h, off, chunk)))
    return Buffer.concat(parts)
  } finally {
    reader.release(h)
  }
}

function dataFile(cacheDir: string, blob: BlobRef): string {
  const hex = blob.digest.slice(7)
  return join(cacheDir, 'blobs', hex.slice(0, 2), `${hex}.data`)
}

describe('blob cache and file reader against a real registry', () => {
  it('reads a blob byte for byte; the complete data file is the blob; a sequential 256 MiB read makes few, large GETs', async () => {
    const data = randomBytes(256 * MiB)
    const { blob, repo } = await pushBlob(data)
    const h = await harness(repo)
    const got = await readAll(h.reader, { blob, offset: 0, size: blob.size })
    expect(got.equals(data)).toBe(true)
    await h.reader.whenIdle()
    const gets = h.proxy.blobRequests()
    // 8 MiB parts: 32 for 256 MiB when every read continues the run (a few more while the window grows).
    expect(gets.length).toBeLessThanOrEqual(40)
    expect(gets.length).toBeGreaterThanOrEqual(32)
    expect(h.proxy.blobBytes()).toBe(blob.size)
    expect(h.cache.isVerified(blob)).toBe(true)
    expect((await readFile(dataFile(h.cacheDir, blob))).equals(data)).toBe(true)
    // Private to its owner.
    expect((await stat(dataFile(h.cacheDir, blob))).mode & 0o777).toBe(0o600)
    expect((await stat(join(h.cacheDir, 'blobs'))).mode & 0o777).toBe(0o700)
  })

  it('answers a ready read synchronously with a range of the data file, at any offset and length', async () => {
    const data = seededBytes(3 * MiB + 12345, 'sync')
    const { blob, repo } = await pushBlob(data)
    const h = await harness(repo)
    const extent = { blob, offset: 1000, size: blob.size - 2000 }
    await readAll(h.reader, extent)
    // Reads are answered as soon as their bytes are written; the last blocks may still be landing.
    await waitFor(() => h.cache.isVerified(blob))
    const handle = h.reader.open(extent)
    for (const [off, len] of [[0, 1], [4095, 2], [MiB - 1000, 4096], [extent.size - 10, 100], [7, 3 * MiB]] as const) {
      const r = h.reader.read(handle, off, len)
      expect(r instanceof Promise).toBe(false)
      const bytes = await bytesOf(r as ReadResult)
      const end = Math.min(off + len, extent.size)
      expect(bytes.equals(data.subarray(1000 + off, 1000 + end))).toBe(true)
    }
    expect(await bytesOf(await h.reader.read(handle, extent.size, 10))).toHaveLength(0)
    h.reader.release(handle)
  })

  it('single flight: 32 concurrent reads of one cold block make one GET of that block', async () => {
    const data = randomBytes(8 * MiB)
    const { blob, repo } = await pushBlob(data)
    const h = await harness(repo)
    h.proxy.set({ latencyMs: 200 })
    const extent = { blob, offset: 0, size: blob.size }
    const handles = Array.from({ length: 32 }, () => h.reader.open(extent))
    // 256 KiB reads inside block 4 (far from the start: no read-ahead), each from its own handle.
    const K = 256 * 1024
    const got = await Promise.all(handles.map(async (hd, i) => bytesOf(await h.reader.read(hd, 4 * MiB + (i % 4) * K, K))))
    got.forEach((b, i) => expect(b.equals(data.subarray(4 * MiB + (i % 4) * K, 4 * MiB + (i % 4 + 1) * K))).toBe(true))
    expect(h.proxy.blobRequests()).toHaveLength(1)
    expect(h.proxy.blobRequests()[0]!.range).toBe(`bytes=${4 * MiB}-${5 * MiB - 1}`)
    handles.forEach((hd) => h.reader.release(hd))
  })

  it('reads arriving out of order (as the kernel\'s parallel readahead sends them) keep the run and its read-ahead', async () => {
    const data = randomBytes(64 * MiB)
    const { blob, repo } = await pushBlob(data)
    const h = await harness(repo)
    const extent = { blob, offset: 0, size: blob.size }
    const handle = h.reader.open(extent)
    const K = 128 * 1024
    for (let base = 0; base < blob.size; base += 4 * K) {
      // Four 128 KiB reads per 512 KiB, answered in a shuffled order (after the first, in order, that
      // starts the run as the kernel's synchronous read does).
      const order = base === 0 ? [0, 1, 2, 3] : [2, 0, 3, 1]
      const got = await Promise.all(order.map(async (i) => [i, await bytesOf(await h.reader.read(handle, base + i * K, K))] as const))
      for (const [i, b] of got) expect(b.equals(data.subarray(base + i * K, base + (i + 1) * K))).toBe(true)
    }
    h.reader.release(handle)
    await h.reader.whenIdle()
    // Without run continuation every 1 MiB block would be its own GET (64); with it, 8 MiB parts.
    expect(h.proxy.blobRequests().length).toBeLessThanOrEqual(16)
  })

  it('a read the registry cannot serve fails within its deadline; an overlapping read right after gets the same error at once', async () => {
    const data = randomBytes(2 * MiB)
    const { blob, repo } = await pushBlob(data)
    const h = await harness(repo, { readTimeoutMs: 1500 })
    h.proxy.set({ blackhole: true })
    const handle = h.reader.open({ blob, offset: 0, size: blob.size })
    let t = performance.now()
    await expect(Promise.resolve(h.reader.read(handle, MiB + 5, 100))).rejects.toMatchObject({ code: 'ETIMEDOUT' })
    expect(performance.now() - t).toBeLessThan(10_000)
    t = performance.now()
    expect(() => h.reader.read(handle, MiB + 50, 10)).toThrow(expect.objectContaining({ code: 'ETIMEDOUT' }))
    expect(performance.now() - t).toBeLessThan(100)
    // Recovery without reopening: the registry answers again.
    h.proxy.set({ blackhole: false })
    await new Promise((r) => setTimeout(r, 1100))
    expect((await bytesOf(await h.reader.read(handle, MiB + 5, 100))).equals(data.subarray(MiB + 5, MiB + 105))).toBe(true)
    h.reader.release(handle)
  })

  it('a server that ignores Range and sends the whole blob: every block is kept, later reads fetch nothing', async () => {
    const data = randomBytes(16 * MiB)
    const { blob, repo } = await pushBlob(data)
    const h = await harness(repo)
    h.proxy.set({ ignoreRange: true })
    const handle = h.reader.open({ blob, offset: 0, size: blob.size })
    expect((await bytesOf(await h.reader.read(handle, 5 * MiB, 10))).equals(data.subarray(5 * MiB, 5 * MiB + 10))).toBe(true)
    await waitFor(() => h.cache.cachedBytes(blob, 0, blob.size) === blob.size)
    const before = h.proxy.blobRequests().length
    for (const off of [0, 3 * MiB, 15 * MiB]) {
      expect((await bytesOf(await h.reader.read(handle, off, 4096))).equals(data.subarray(off, off + 4096))).toBe(true)
    }
    expect(h.proxy.blobRequests().length).toBe(before)
    expect(h.cache.isVerified(blob)).toBe(true)
    h.reader.release(handle)
  })

  it('a server that sends the whole blob to every range: one response fills the cache, the read-ahead parts already asked for are cancelled', async () => {
    const data = randomBytes(64 * MiB)
    const { blob, repo } = await pushBlob(data)
    const h = await harness(repo)
    h.proxy.set({ ignoreRange: true, bandwidthBytesPerSec: 256 * MiB })
    expect((await readAll(h.reader, { blob, offset: 0, size: blob.size })).equals(data)).toBe(true)
    await waitFor(() => h.cache.isVerified(blob))
    // Without taking blocks over from the first whole-blob answer, every 8 MiB read-ahead part would stream the
    // whole 64 MiB again.
    expect(h.proxy.blobBytes()).toBeLessThanOrEqual(2 * blob.size)
  })

  it('readers at several places at once, each range answered with the whole blob: every read gets its bytes', async () => {
    const data = randomBytes(64 * MiB)
    const { blob, repo } = await pushBlob(data)
    const h = await harness(repo)
    // Every part's whole-blob answer arrives at about the same time; the first takes the others' blocks over
    // and cancels them, and a cancelled part must not take them back when its own answer turns out whole.
    h.proxy.set({ ignoreRange: true, latencyMs: 50, bandwidthBytesPerSec: 256 * MiB })
    const handle = h.reader.open({ blob, offset: 0, size: blob.size })
    const offsets = [0, 9, 21, 33, 45, 57].map((m) => m * MiB + 7)
    const reads = await Promise.all(offsets.map((off) => Promise.resolve(h.reader.read(handle, off, 2 * MiB)).then(bytesOf)))
    offsets.forEach((off, i) => expect(reads[i]!.equals(data.subarray(off, off + 2 * MiB))).toBe(true))
    h.reader.release(handle)
  })

  it('a registry serving wrong bytes: the blob fails verification, reads get ECORRUPT, nothing stays cached', async () => {
    const data = randomBytes(3 * MiB)
    const { blob, repo } = await pushBlob(data)
    const h = await harness(repo)
    h.proxy.set({ corruptBlobBodies: true })
    const handle = h.reader.open({ blob, offset: 0, size: blob.size })
    const reads = [0, 1, 2].map((b) => Promise.resolve(h.reader.read(handle, b * MiB, MiB)).then(bytesOf))
    const outcomes = await Promise.allSettled(reads)
    // The read that completes the blob waits for its verification and fails; later reads fail at once.
    expect(outcomes.some((o) => o.status === 'rejected')).toBe(true)
    await expect(Promise.resolve(h.reader.read(handle, 0, 10))).rejects.toBeInstanceOf(CorruptBlobError)
    expect(() => h.reader.open({ blob, offset: 0, size: blob.size })).toThrow(CorruptBlobError)
    h.reader.release(handle)
    await waitFor(async () => !(await exists(dataFile(h.cacheDir, blob))))
  })

  it('a blob of one block is never served before it is verified', async () => {
    const data = randomBytes(200_000)
    const { blob, repo } = await pushBlob(data)
    const h = await harness(repo)
    h.proxy.set({ corruptBlobBodies: true })
    const handle = h.reader.open({ blob, offset: 0, size: blob.size })
    await expect(Promise.resolve(h.reader.read(handle, 0, 100))).rejects.toMatchObject({ code: 'ECORRUPT' })
    h.reader.release(handle)
  })

  it('a block damaged on disk between two runs is fetched again, never served', async () => {
    const data = randomBytes(4 * MiB)
    const { blob, repo } = await pushBlob(data)
    const cacheDir = await tempDir('cnaifs-blobcache-')
    const first = await harness(repo, { cacheDir })
    await readAll(first.reader, { blob, offset: 0, size: blob.size })
    await waitFor(() => first.cache.isVerified(blob))
    await first.cache.close()
    // 16 bytes flipped in block 2, length unchanged.
    const fh = await open(dataFile(cacheDir, blob), 'r+')
    await fh.write(Buffer.alloc(16, 0xee), 0, 16, 2 * MiB + 777)
    await fh.close()
    const second = await harness(repo, { cacheDir })
    const got = await readAll(second.reader, { blob, offset: 0, size: blob.size })
    expect(got.equals(data)).toBe(true)
    const gets = second.proxy.blobRequests()
    expect(gets).toHaveLength(1)
    expect(gets[0]!.range).toBe(`bytes=${2 * MiB}-${3 * MiB - 1}`)
  })

  it('a warm second run makes no request and checks each block once', async () => {
    const data = randomBytes(6 * MiB)
    const { blob, repo } = await pushBlob(data)
    const cacheDir = await tempDir('cnaifs-blobcache-')
    const first = await harness(repo, { cacheDir })
    await readAll(first.reader, { blob, offset: 0, size: blob.size })
    await waitFor(() => first.cache.isVerified(blob))
    await first.cache.close()
    const second = await harness(repo, { cacheDir })
    expect((await readAll(second.reader, { blob, offset: 0, size: blob.size })).equals(data)).toBe(true)
    expect(second.proxy.blobRequests()).toHaveLength(0)
    expect(second.cache.isVerified(blob)).toBe(true)
  })

  it('torn map slots and crash leftovers read as absent; a cache of the old one-file-per-block layout is removed', async () => {
    const data = randomBytes(3 * MiB)
    const { blob, repo } = await pushBlob(data)
    const cacheDir = await tempDir('cnaifs-blobcache-')
    // An old-layout cache and a leftover temp file of a dead writer.
    await mkdir(join(cacheDir, 'blocks', 'ab', 'ab'.padEnd(64, '0')), { recursive: true })
    await writeFile(join(cacheDir, 'blocks', 'block-size'), '1048576\n')
    const first = await harness(repo, { cacheDir })
    expect(await exists(join(cacheDir, 'blocks'))).toBe(false)
    await readAll(first.reader, { blob, offset: 0, size: blob.size })
    await waitFor(() => first.cache.isVerified(blob))
    await first.cache.close()
    const hex = blob.digest.slice(7)
    const mapPath = join(cacheDir, 'blobs', hex.slice(0, 2), `${hex}.map`)
    // Garbage over block 1's slot: it must not count as present.
    const fh = await open(mapPath, 'r+')
    await fh.write(randomBytes(48), 0, 48, 64 + 48)
    await fh.close()
    await writeFile(join(cacheDir, 'blobs', hex.slice(0, 2), `.tmp-999999-abc123`), 'x')
    const second = await harness(repo, { cacheDir })
    expect((await readAll(second.reader, { blob, offset: 0, size: blob.size })).equals(data)).toBe(true)
    expect(second.proxy.blobRequests().map((r) => r.range)).toEqual([`bytes=${MiB}-${2 * MiB - 1}`])
    expect(await exists(join(cacheDir, 'blobs', hex.slice(0, 2), `.tmp-999999-abc123`))).toBe(false)
  })

  it('a reader killed in the middle of block writes: at the next start the durable blocks are used, the rest fetched again, every byte right', async () => {
    const data = randomBytes(48 * MiB)
    const { blob, repo } = await pushBlob(data)
    const cacheDir = await tempDir('cnaifs-blobcache-')
    // A slow link throughout, so read-ahead cannot have fetched the whole blob before the kill.
    const proxy = await startProxy(reg.url, { bandwidthBytesPerSec: 8 * MiB })
    proxies.push(proxy)
    const child = spawn(process.execPath, [join(REPO_ROOT, 'test/helpers/cache-reader-child.mjs'), cacheDir, proxy.host, repo, blob.digest, String(blob.size), String(16 * MiB)], { stdio: ['ignore', 'pipe', 'inherit'] })
    const exited = new Promise((r) => child.once('exit', r))
    let out = ''
    child.stdout!.on('data', (c: Buffer) => { out += c.toString() })
    try {
      await waitFor(() => out.includes('durable'), 90_000)
      // Kill while blocks are being written: a few MiB after the first 16 MiB were made durable.
      const at = proxy.blobBytes()
      await waitFor(() => proxy.blobBytes() > at + 3 * MiB, 90_000)
    } finally {
      child.kill('SIGKILL')
      await exited
    }
    expect(out).not.toContain('done')
    proxy.set({ bandwidthBytesPerSec: 0 })
    proxy.reset()
    const h = await harness(repo, { cacheDir, proxy })
    expect((await readAll(h.reader, { blob, offset: 0, size: blob.size })).equals(data)).toBe(true)
    // The first 16 MiB were recorded durable before the kill: never fetched again.
    expect(h.proxy.blobBytes()).toBeLessThanOrEqual(blob.size - 16 * MiB)
    expect(h.proxy.blobRequests().every((r) => Number(/bytes=(\d+)-/.exec(r.range ?? '')?.[1]) >= 16 * MiB)).toBe(true)
  }, 240_000)

  it('evicts whole blobs, least recently used first, never one that is open', async () => {
    const a = await pushBlob(randomBytes(4 * MiB))
    const b = await pushBlob(randomBytes(4 * MiB))
    const cacheDir = await tempDir('cnaifs-blobcache-')
    const h = await harness(a.repo, { cacheDir, maxDiskBytes: 6 * MiB })
    const sourceB: BlobSource = { kind: 'registry', reference: parseReference(`${h.proxy.host}/${b.repo}:x`) }
    const readerB = new FileReader({ cache: h.cache, sourceFor: () => sourceB })
    const held = h.reader.open({ blob: a.blob, offset: 0, size: a.blob.size })
    for (let off = 0; off < a.blob.size; off += MiB) await bytesOf(await h.reader.read(held, off, MiB))
    await readAll(readerB, { blob: b.blob, offset: 0, size: b.blob.size })
    // Over the limit, but A is open: B (released) goes.
    await waitFor(() => h.cache.diskBytes() <= 6 * MiB)
    expect(h.cache.cachedBytes(a.blob, 0, a.blob.size)).toBe(a.blob.size)
    expect(await exists(dataFile(cacheDir, b.blob))).toBe(false)
    h.reader.release(held)
  })

  it('a full cache disk: reads go on from memory and the registry, the cache says it cannot write', async () => {
    const data = randomBytes(12 * MiB)
    const { blob, repo } = await pushBlob(data)
    const cacheDir = await tempDir('cnaifs-blobcache-')
    // A 3 MiB filesystem for a 12 MiB blob: the workers' writes fail with ENOSPC part way.
    await execFileAsync('mount', ['-t', 'tmpfs', '-o', 'size=3m,mode=0700', 'tmpfs', cacheDir])
    closers.push(() => execFileAsync('umount', ['-l', cacheDir]).then(() => undefined))
    const h = await harness(repo, { cacheDir })
    const got = await readAll(h.reader, { blob, offset: 0, size: blob.size })
    const bad: number[] = []
    for (let b = 0; b < 12; b++) if (!got.subarray(b * MiB, (b + 1) * MiB).equals(data.subarray(b * MiB, (b + 1) * MiB))) bad.push(b)
    expect(bad).toEqual([])
    expect(got.equals(data)).toBe(true)
    expect(h.cache.writeFailures).toBeGreaterThan(0)
    expect(h.cache.writable).toBe(false)
  })
})

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false)
}

async function waitFor(cond: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const until = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > until) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 20))
  }
}
