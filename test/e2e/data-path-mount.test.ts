/**
 * The data path through real mounts (issue 9 and the daemon lifetime of issue 11): what a sequential reader,
 * an mmap reader and 64 readers at once cost the registry and the daemon, the daemon leaving with its mount,
 * and the readiness document. The real CLI and daemon, a real registry behind the counting proxy; readers are
 * child processes (dd, python), so nothing here can hang the test process. Counts, never times, are asserted.
 */
import { execFile, spawn } from 'node:child_process'
import { readFile, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest'
import type {} from '../helpers/global-setup.js'
import { startProxy, type FaultProxy } from '../helpers/proxy.js'
import { processRunning } from '../../src/daemon/runtime-registry.js'
import {
  REPO_ROOT, cleanupTempDirs, describeResult, pushModelDir, runCli, seededBytes, sha256, tempDir, uniqueRepo,
} from '../helpers/cli.js'

const execFileAsync = promisify(execFile)
const reg = inject('registry')
const MiB = 1024 * 1024

const live: Array<{ mp: string; cacheDir: string; pid?: number }> = []
const proxies: FaultProxy[] = []

async function isMounted(mp: string): Promise<boolean> {
  return (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').some((l) => l.split(' ')[4] === mp)
}
async function waitFor(what: string, cond: () => Promise<boolean> | boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

afterEach(async () => {
  for (const m of live.splice(0)) {
    if (await isMounted(m.mp)) await runCli(['--cache-dir', m.cacheDir, 'unmount', m.mp], { timeoutMs: 20_000 }).catch(() => undefined)
    if (await isMounted(m.mp)) await execFileAsync('fusermount', ['-uz', m.mp]).catch(() => undefined)
    if (m.pid && processRunning(m.pid)) process.kill(m.pid, 'SIGKILL')
  }
  for (const p of proxies.splice(0)) await p.stop()
})
afterAll(async () => {
  await cleanupTempDirs()
})

interface Mounted { mp: string; cacheDir: string; pid: number; proxy: FaultProxy }

async function mount(repo: string, args: string[] = []): Promise<Mounted> {
  const proxy = await startProxy(reg.url)
  proxies.push(proxy)
  const cacheDir = await tempDir('cnaifs-cache-')
  const mp = join(await tempDir('cnaifs-mp-'), 'mnt')
  const entry: { mp: string; cacheDir: string; pid?: number } = { mp, cacheDir }
  live.push(entry)
  const r = await runCli(['--cache-dir', cacheDir, 'mount', `${proxy.host}/${repo}:v1`, mp, ...args], { timeoutMs: 60_000 })
  expect(r.code, describeResult(r)).toBe(0)
  const s = await runCli(['--cache-dir', cacheDir, 'status', mp, '--json'])
  expect(s.code, describeResult(s)).toBe(0)
  entry.pid = (JSON.parse(s.stdout.toString()) as { pid: number }).pid
  return { mp, cacheDir, pid: entry.pid, proxy }
}

async function rssKb(pid: number, field = 'VmRSS'): Promise<number> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0)
}

/** A .npy file of float32 values: numpy's 128-byte header, then `bytes - 128` seeded bytes. */
function npy(bytes: number): Buffer {
  const count = (bytes - 128) / 4
  const header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${count},), }`.padEnd(117, ' ') + '\n'
  const head = Buffer.alloc(10)
  head[0] = 0x93
  head.write('NUMPY', 1)
  head[6] = 1
  head.writeUInt16LE(header.length, 8)
  return Buffer.concat([head, Buffer.from(header), seededBytes(bytes - 128, 'npy')])
}

const STREAM = seededBytes(256 * MiB, 'stream')
let repo: string

beforeAll(async () => {
  const dir = await tempDir('cnaifs-dp-model-')
  await writeFile(join(dir, 'config.json'), '{"model_type":"data-path"}\n')
  await writeFile(join(dir, 'stream.bin'), STREAM)
  await writeFile(join(dir, 'values.npy'), npy(256 * MiB))
  repo = uniqueRepo('data-path')
  await pushModelDir(dir, `${reg.host}/${repo}:v1`)
}, 300_000)

describe('the data path through a mount', () => {
  it('a sequential read of 256 MiB (dd bs=1M) is byte for byte right and makes few, large GETs', async () => {
    const m = await mount(repo)
    const { stdout } = await execFileAsync('sh', ['-c', `dd if='${join(m.mp, 'stream.bin')}' bs=1M status=none | sha256sum`])
    expect(stdout.split(' ')[0]).toBe(sha256(STREAM))
    await new Promise((r) => setTimeout(r, 300))
    const gets = m.proxy.blobRequests()
    // 8 MiB read-ahead parts: 32 for 256 MiB once the window has grown (a few smaller ones before).
    expect(gets.length, JSON.stringify(gets.map((g) => g.range))).toBeLessThanOrEqual(44)
    expect(m.proxy.blobBytes()).toBe(256 * MiB)
  })

  it('an mmap reader touching 20 scattered values fetches at most 2× what pread of the same values fetches', async () => {
    const fetched: Record<string, number> = {}
    for (const how of ['mmap', 'pread']) {
      const m = await mount(repo)
      const { stdout } = await execFileAsync('/usr/bin/python3', [join(REPO_ROOT, 'bench', 'touch-values.py'), how, join(m.mp, 'values.npy'), '20', '5'])
      expect(stdout.trim()).not.toBe('')
      await new Promise((r) => setTimeout(r, 300))
      fetched[how] = m.proxy.blobBytes()
    }
    expect(fetched.pread).toBeGreaterThanOrEqual(20 * 4)
    expect(fetched.pread).toBeLessThanOrEqual(20 * MiB) // one block per value at most
    expect(fetched.mmap, JSON.stringify(fetched)).toBeLessThanOrEqual(2 * fetched.pread!)
  })

  it('64 readers at once: the daemon stays within idle RSS + its memory budget + 1 MiB per read in flight, every byte right', async () => {
    const m = await mount(repo, ['--memory-budget', '64M'])
    const idle = await rssKb(m.pid)
    let peak = idle
    let sampling = true
    const sampler = (async () => {
      while (sampling) {
        peak = Math.max(peak, await rssKb(m.pid).catch(() => 0))
        await new Promise((r) => setTimeout(r, 20))
      }
    })()
    const readers = Array.from({ length: 64 }, (_, i) => new Promise<string>((resolve, reject) => {
      // Each reads its own 4 MiB of the cold file: 64 reads in flight at once.
      const child = spawn('sh', ['-c', `dd if='${join(m.mp, 'stream.bin')}' bs=1M skip=${i * 4} count=4 status=none | sha256sum`])
      let out = ''
      child.stdout.on('data', (c: Buffer) => { out += c.toString() })
      child.once('error', reject)
      child.once('close', () => resolve(out.split(' ')[0]!))
    }))
    const sums = await Promise.all(readers)
    sampling = false
    await sampler
    sums.forEach((s, i) => expect(s, `reader ${i}`).toBe(sha256(STREAM.subarray(i * 4 * MiB, (i + 1) * 4 * MiB))))
    const grownMiB = (peak - idle) / 1024
    expect(grownMiB, `idle ${idle} kB, peak ${peak} kB`).toBeLessThanOrEqual(64 + 64)
  })

  it('the daemon exits when its mount is removed from outside (fusermount -uz), and on a single SIGTERM', async () => {
    const a = await mount(repo)
    await execFileAsync('fusermount', ['-uz', a.mp])
    await waitFor('the daemon to exit after fusermount -uz', () => !processRunning(a.pid), 5_000)

    const b = await mount(repo)
    expect((await readFile(join(b.mp, 'config.json'), 'utf8'))).toContain('data-path')
    process.kill(b.pid, 'SIGTERM')
    await waitFor('the daemon to exit after one SIGTERM', () => !processRunning(b.pid), 5_000)
    expect(await isMounted(b.mp)).toBe(false)
  })

  it('the readiness document: unlisted, valid JSON, mounted → prefetching → verified as the cache fills', async () => {
    const m = await mount(repo)
    const statusPath = join(m.mp, '.cnaifs', 'status')
    const read = async (): Promise<{ state: string; bytesCached: number; bytesTotal: number; blobsVerified: number; blobsTotal: number; binding: string }> =>
      JSON.parse(await readFile(statusPath, 'utf8'))
    const first = await read()
    expect(first.state).toBe('mounted')
    expect(first.blobsTotal).toBe(3)
    expect(first.bytesTotal).toBe(512 * MiB + 27)
    expect(['fuse3', 'fuse-native']).toContain(first.binding)
    expect(await readdir(m.mp)).toEqual(['config.json', 'stream.bin', 'values.npy'])
    // A slow link, so the prefetch is seen under way.
    m.proxy.set({ bandwidthBytesPerSec: 64 * MiB })
    const prefetch = runCli(['--cache-dir', m.cacheDir, 'prefetch', m.mp, '--no-progress'], { timeoutMs: 120_000 })
    const seen = new Set<string>()
    let settled = false
    void prefetch.finally(() => { settled = true })
    while (!settled) {
      const s = await read()
      seen.add(s.state)
      expect(s.bytesCached).toBeLessThanOrEqual(s.bytesTotal)
      await new Promise((r) => setTimeout(r, 100))
    }
    const p = await prefetch
    expect(p.code, describeResult(p)).toBe(0)
    expect(seen.has('prefetching'), [...seen].join(',')).toBe(true)
    const done = await read()
    expect(done.state).toBe('verified')
    expect(done.bytesCached).toBe(done.bytesTotal)
    expect(done.blobsVerified).toBe(3)
  })
})
