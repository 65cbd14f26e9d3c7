/**
 * End-to-end tests of `cnaifs mount`: the real CLI as a child process, a real registry (the shared one of
 * global-setup, or a private one where a test stops or damages it), the fault-injecting proxy to count and
 * break blob traffic, and real FUSE mounts read by this process and by child processes.
 *
 * The daemon is another process, so touching its mount from here cannot deadlock it; reads that are meant
 * to fail or hang run in a child process with a kill timer anyway, so a bug can never hang the test run.
 * Every mount is recorded and torn down in afterEach (unmount, then fusermount -uz and SIGKILL as fallbacks).
 */
import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import {
  chmod, mkdir, open, readdir, readFile, rename, rm, stat, statfs, truncate, unlink, utimes, writeFile,
} from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest'
import type {} from '../helpers/global-setup.js' // ProvidedContext typing for inject()
import type { MountStatus } from '../../src/daemon/control.js'
import { startProxy, type FaultProxy } from '../helpers/proxy.js'
import { freePort, startRegistry, type RegistryProcess } from '../helpers/registry.js'
import { processRunning } from '../../src/daemon/runtime-registry.js'
import {
  cleanupTempDirs, describeResult, makeModelDir, pushModelDir, runCli, sha256, sha256File, tempDir, uniqueRepo,
  type CliResult, type ModelDir, type ModelFileSpec,
} from '../helpers/cli.js'

const execFileAsync = promisify(execFile)
const reg = inject('registry')
const MiB = 1024 * 1024

// ---------------------------------------------------------------------------------------------------------
// Mount bookkeeping: everything mounted is torn down after each test, whatever happened.

const live = new Map<string, { cacheDir: string }>()
const proxies: FaultProxy[] = []

async function mountTable(): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8')
  return text.split('\n').filter(Boolean).map((l) => l.split(' ')[4]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
}

async function isMounted(mp: string): Promise<boolean> {
  return (await mountTable()).includes(mp)
}


/** Pids of mount daemons (`cnaifs … mount REF MP … --foreground`) serving `mp`. */
async function daemonPids(mp: string): Promise<number[]> {
  const pids: number[] = []
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const argv: string[] = await readFile(`/proc/${name}/cmdline`, 'utf8').then((t) => t.split('\0'), () => [])
    if (argv.includes('mount') && argv.includes(mp) && argv.includes('--foreground')) pids.push(Number(name))
  }
  return pids
}

async function teardownMount(mp: string, cacheDir: string): Promise<void> {
  if (await isMounted(mp)) await runCli(['--cache-dir', cacheDir, 'unmount', mp], { timeoutMs: 15_000 }).catch(() => undefined)
  if (await isMounted(mp)) await execFileAsync('fusermount', ['-uz', mp]).catch(() => undefined)
  for (const pid of await daemonPids(mp)) process.kill(pid, 'SIGKILL')
}

afterEach(async () => {
  for (const [mp, m] of [...live]) {
    await teardownMount(mp, m.cacheDir)
    live.delete(mp)
  }
  for (const p of proxies.splice(0)) await p.stop()
})

afterAll(async () => {
  // Detaches any mount left inside this file's temp dirs (only those: other files mount at the same time).
  await cleanupTempDirs()
})

async function proxyTo(url: string): Promise<FaultProxy> {
  const p = await startProxy(url)
  proxies.push(p)
  return p
}

type MountStatusJson = MountStatus

/** A CLI bound to one cache dir, and the mounts it makes. */
class Session {
  constructor(readonly cacheDir: string) {}

  static async create(): Promise<Session> {
    return new Session(await tempDir('cnaifs-cache-'))
  }

  run(args: string[], timeoutMs = 60_000): Promise<CliResult> {
    return runCli(['--cache-dir', this.cacheDir, ...args], { timeoutMs })
  }

  /** `cnaifs mount`, recording the mount point for teardown whatever the outcome. */
  async tryMount(ref: string, mp: string, args: string[] = [], timeoutMs = 60_000): Promise<CliResult> {
    live.set(mp, live.get(mp) ?? { cacheDir: this.cacheDir })
    return this.run(['mount', ref, mp, ...args], timeoutMs)
  }

  /** Mounts and checks it worked: mounted, one daemon in the background; returns its pid and log file. */
  async mount(ref: string, mp: string, args: string[] = []): Promise<{ pid: number; logFile: string; result: CliResult }> {
    const result = await this.tryMount(ref, mp, args)
    expect(result.code, describeResult(result)).toBe(0)
    expect(await isMounted(mp)).toBe(true)
    const pids = await daemonPids(mp)
    expect(pids).toHaveLength(1)
    const logFile = /log: (\S+)\s*$/.exec(result.stdout.toString())?.[1]
    expect(logFile, describeResult(result)).toBeTruthy()
    return { pid: pids[0]!, logFile: logFile!, result }
  }

  /** `cnaifs unmount`: the mount is gone and so is its daemon. */
  async unmount(mp: string): Promise<void> {
    const pids = await daemonPids(mp)
    const r = await this.run(['unmount', mp], 20_000)
    expect(r.code, describeResult(r)).toBe(0)
    expect(await isMounted(mp)).toBe(false)
    await waitFor(async () => !pids.some(processRunning), 5_000, 'the daemon to exit')
    live.delete(mp)
  }

  async status(mp: string): Promise<MountStatusJson> {
    const r = await this.run(['status', mp, '--json'], 20_000)
    expect(r.code, describeResult(r)).toBe(0)
    return JSON.parse(r.stdout.toString()) as MountStatusJson
  }
}

async function mountpoint(): Promise<string> {
  return join(await tempDir('cnaifs-mp-'), 'mnt')
}

// ---------------------------------------------------------------------------------------------------------
// Reading

/** Result of a read done by a child process (so a hung or failing read can never hang this one). */
interface ChildRead { ok: boolean; code?: string; n?: number; sha?: string; ms: number; timedOut?: boolean }

const READER = `
const fs = require('fs'), crypto = require('crypto')
const [file, off, len] = process.argv.slice(1)
const t = process.hrtime.bigint()
const ms = () => Number(process.hrtime.bigint() - t) / 1e6
try {
  const fd = fs.openSync(file, 'r')
  const want = Number(len), buf = Buffer.alloc(want)
  let n = 0
  while (n < want) { const r = fs.readSync(fd, buf, n, want - n, Number(off) + n); if (r === 0) break; n += r }
  console.log(JSON.stringify({ ok: true, n, sha: crypto.createHash('sha256').update(buf.subarray(0, n)).digest('hex'), ms: ms() }))
} catch (e) {
  console.log(JSON.stringify({ ok: false, code: e.code, ms: ms() }))
}`

function childRead(file: string, offset: number, length: number, timeoutMs = 30_000): Promise<ChildRead> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', READER, file, String(offset), String(length)], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    let timedOut = false
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL') }, timeoutMs)
    child.stdout.on('data', (c: Buffer) => (out += c.toString()))
    child.stderr.on('data', (c: Buffer) => (err += c.toString()))
    child.once('error', reject)
    child.once('close', () => {
      clearTimeout(timer)
      if (timedOut) return resolve({ ok: false, timedOut: true, ms: timeoutMs })
      try {
        resolve(JSON.parse(out) as ChildRead)
      } catch {
        reject(new Error(`reader child printed ${JSON.stringify(out)}; stderr ${err}`))
      }
    })
  })
}

/** Every regular file and directory below `root`, relative, '/'-separated. */
async function walk(root: string): Promise<{ files: string[]; dirs: string[] }> {
  const files: string[] = []
  const dirs: string[] = []
  const visit = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(root, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${e.name}` : e.name
      if (e.isDirectory()) { dirs.push(p); await visit(p) } else if (e.isFile()) files.push(p)
      else throw new Error(`unexpected entry type at ${p}`)
    }
  }
  await visit('')
  return { files: files.sort(), dirs: dirs.sort() }
}

/** Reads every file of the model through the mount and compares it with the source. */
async function expectSameFiles(mp: string, model: ModelDir): Promise<void> {
  const { files } = await walk(mp)
  expect(files).toEqual(Object.keys(model.files).sort())
  for (const [p, f] of Object.entries(model.files)) {
    expect((await stat(join(mp, p))).size, p).toBe(f.size)
    expect(await sha256File(join(mp, p)), p).toBe(f.sha256)
  }
}

async function errnoOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p
    return undefined
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err)
  }
}

/** How a command-line tool failed: its exit status and what it printed on stderr (undefined if it succeeded). */
async function toolFailure(p: Promise<unknown>): Promise<{ exit: number; stderr: string } | undefined> {
  try {
    await p
    return undefined
  } catch (err) {
    const e = err as { code?: number; stderr?: string }
    return { exit: e.code ?? -1, stderr: e.stderr ?? '' }
  }
}

async function waitFor(cond: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** The files (data, map) the cache holds for a blob. */
async function cachedBlobFiles(cacheDir: string, digest: string): Promise<string[]> {
  const hex = digest.replace(/^sha256:/, '')
  try {
    return (await readdir(join(cacheDir, 'blobs', hex.slice(0, 2)))).filter((n) => n.startsWith(hex))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
}

async function getfattr(file: string, name: string): Promise<string> {
  const { stdout } = await execFileAsync('getfattr', ['--only-values', '-n', name, file])
  return stdout
}

// ---------------------------------------------------------------------------------------------------------
// The model most tests mount: nested directories, a script, an empty file, one ~20 MiB random file.

const BASE_MTIME = 1_700_000_000
const MODEL_SPEC: Record<string, ModelFileSpec> = {
  'config.json': { size: 700, mode: 0o644 },
  'model.safetensors': { size: 20 * MiB + 12_345, mode: 0o644 },
  'tokenizer/tokenizer.json': { size: 150_000, mode: 0o644 },
  'tokenizer/vocab/merges.txt': { size: 3_001, mode: 0o600 },
  'scripts/run.sh': { size: 512, mode: 0o755 },
  'docs/EMPTY.md': { size: 0, mode: 0o644 },
  'README.md': { size: 2_048, mode: 0o644 },
}
/** Fractional source mtimes: a mount shows whole seconds (tar headers and file metadata keep seconds). */
const mtimeOf = (i: number): number => BASE_MTIME + i * 1000 + 0.75

let model: ModelDir
const refs: Record<'raw' | 'tar', { repo: string; tag: string; digest: string }> = {} as never

beforeAll(async () => {
  model = await makeModelDir(MODEL_SPEC, 'mount-e2e')
  for (const [i, p] of Object.keys(MODEL_SPEC).entries()) await utimes(join(model.dir, p), mtimeOf(i), mtimeOf(i))
  for (const format of ['raw', 'tar'] as const) {
    const repo = uniqueRepo(`mount-${format}`)
    const digest = await pushModelDir(model.dir, `${reg.host}/${repo}:v1`, { format })
    refs[format] = { repo, tag: 'v1', digest }
  }
})

// ---------------------------------------------------------------------------------------------------------

describe.each(['raw', 'tar'] as const)('a %s model', (format) => {
  it('every file reads back byte for byte; stat and ls -l show sizes, modes, mtimes and directories; a warm remount makes no blob request', async () => {
    const cli = await Session.create()
    const proxy = await proxyTo(reg.url)
    const mp = await mountpoint()
    const ref = `${proxy.host}/${refs[format].repo}:v1`
    const { result } = await cli.mount(ref, mp)
    expect(result.stdout.toString()).toContain(refs[format].digest)

    // (1) content
    await expectSameFiles(mp, model)
    expect(proxy.blobRequests().length).toBeGreaterThan(0)

    // (2) metadata, as this process and as stat(1) and ls(1) see it
    const { dirs } = await walk(mp)
    expect(dirs).toEqual(['docs', 'scripts', 'tokenizer', 'tokenizer/vocab'])
    for (const d of dirs) expect((await stat(join(mp, d))).isDirectory(), d).toBe(true)
    const paths = Object.keys(MODEL_SPEC)
    const { stdout } = await execFileAsync('stat', ['-c', '%n|%F|%s|%a|%Y|%u|%g', ...paths], { cwd: mp })
    const rows = stdout.trim().split('\n').map((l) => l.split('|'))
    for (const [i, p] of paths.entries()) {
      const spec = MODEL_SPEC[p] as { size: number; mode: number }
      const [name, type, size, mode, mtime, uid, gid] = rows[i]!
      expect(name).toBe(p)
      expect(type, p).toMatch(/^regular (empty )?file$/)
      expect(Number(size), p).toBe(spec.size)
      expect(mode, p).toBe(spec.mode.toString(8))
      expect(Number(mtime), p).toBe(Math.floor(mtimeOf(i)))
      expect([Number(uid), Number(gid)], p).toEqual([process.getuid!(), process.getgid!()])
    }
    const ls = (await execFileAsync('ls', ['-ln', '--time-style=+%s', join(mp, 'scripts')])).stdout
    expect(ls).toMatch(new RegExp(`^-rwxr-xr-x 1 \\d+ \\d+ 512 ${Math.floor(mtimeOf(paths.indexOf('scripts/run.sh')))} run\\.sh$`, 'm'))
    const top = (await execFileAsync('ls', ['-l', mp])).stdout
    expect(top).toMatch(/^d[rwx-]{9} .* tokenizer$/m)
    expect(top).toMatch(/^-rw-r--r-- .* 20983865 .* model\.safetensors$/m)

    // status agrees: every file fully cached
    const s = await cli.status(mp)
    expect(s.digest).toBe(refs[format].digest)
    expect(Object.fromEntries(s.files.map((f) => [f.path, f.cached]))).toEqual(
      Object.fromEntries(Object.entries(model.files).map(([p, f]) => [p, f.size])))

    // (4) a second mount of the now warm model, same cache dir: no blob request at all
    await cli.unmount(mp)
    proxy.reset()
    await cli.mount(ref, mp)
    await expectSameFiles(mp, model)
    expect(proxy.blobRequests()).toEqual([])
  })
})

// ---------------------------------------------------------------------------------------------------------

describe('a 256 MiB random file', () => {
  const SIZE = 256 * MiB
  let dir: string
  let repo: string
  const name = 'weights/huge.bin'

  beforeAll(async () => {
    dir = await tempDir('cnaifs-huge-')
    await mkdir(join(dir, 'weights'))
    const fh = await open(join(dir, name), 'w')
    try {
      for (let off = 0; off < SIZE; off += 16 * MiB) await fh.write(randomBytes(16 * MiB))
    } finally {
      await fh.close()
    }
    await writeFile(join(dir, 'config.json'), '{"huge":true}\n')
    repo = uniqueRepo('huge')
    await pushModelDir(dir, `${reg.host}/${repo}:v1`)
  })

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  it('reading 1 MiB from the middle transfers only a few blocks, and the right bytes', async () => {
    const cli = await Session.create()
    const proxy = await proxyTo(reg.url)
    const mp = await mountpoint()
    await cli.mount(`${proxy.host}/${repo}:v1`, mp)
    expect(proxy.blobRequests()).toEqual([]) // a raw model is listed from the manifest alone

    const offset = 128 * MiB + 12_345
    const expected = Buffer.alloc(MiB)
    const src = await open(join(dir, name), 'r')
    await src.read(expected, 0, MiB, offset).finally(() => src.close())

    const fh = await open(join(mp, name), 'r')
    const got = Buffer.alloc(MiB)
    try {
      const { bytesRead } = await fh.read(got, 0, MiB, offset)
      expect(bytesRead).toBe(MiB)
    } finally {
      await fh.close()
    }
    expect(sha256(got)).toBe(sha256(expected))
    // Wait for read-ahead in flight to land before counting.
    await new Promise((r) => setTimeout(r, 500))
    const bytes = proxy.blobBytes()
    expect(bytes, JSON.stringify(proxy.blobRequests().map((e) => e.range))).toBeLessThanOrEqual(8 * MiB)
    expect(bytes).toBeGreaterThanOrEqual(MiB)
    const cached = (await cli.status(mp)).files.find((f) => f.path === name)!.cached
    expect(cached).toBeLessThanOrEqual(8 * MiB)
    expect(Number(await getfattr(join(mp, name), 'user.cnaifs.cached'))).toBe(cached)
  })
})

// ---------------------------------------------------------------------------------------------------------

describe('registry outages', () => {
  let dir: ModelDir
  let repo: string
  let digest: string

  beforeAll(async () => {
    dir = await makeModelDir({ 'config.json': 900, 'weights/a.bin': 3 * MiB + 7, 'weights/b.bin': 2 * MiB + 11 }, 'outage')
    repo = uniqueRepo('outage')
    digest = await pushModelDir(dir.dir, `${reg.host}/${repo}:v1`)
  })

  it('cached files keep reading, uncached ones fail with EIO within --read-timeout and work again when the registry returns', async () => {
    const cli = await Session.create()
    const proxy = await proxyTo(reg.url)
    const mp = await mountpoint()
    const ref = `${proxy.host}/${repo}:v1`
    const a = join(mp, 'weights/a.bin')
    const b = join(mp, 'weights/b.bin')
    const cfg = join(mp, 'config.json')
    await cli.mount(ref, mp, ['--read-timeout', '3'])
    expect(await sha256File(a)).toBe(dir.files['weights/a.bin']!.sha256)
    await cli.unmount(mp) // a fresh mount has no page cache: what follows is served by the daemon's cache

    proxy.set({ down: true })
    const { logFile } = await cli.mount(ref, mp, ['--read-timeout', '3']) // by tag, resolved before
    expect(await readFile(logFile, 'utf8')).toMatch(/offline/)
    expect(await sha256File(a)).toBe(dir.files['weights/a.bin']!.sha256)

    // refused connections: EIO once the retries are spent, well within the read timeout
    const refused = await childRead(b, 0, 65536)
    expect(refused).toMatchObject({ ok: false, code: 'EIO' })
    expect(refused.ms).toBeLessThan(3000)

    // a registry that accepts and never answers: EIO when --read-timeout runs out
    proxy.set({ down: false, blackhole: true })
    proxy.reset()
    const hung = await childRead(cfg, 0, 900)
    expect(hung).toMatchObject({ ok: false, code: 'EIO' })
    expect(hung.ms).toBeGreaterThanOrEqual(2500)
    expect(hung.ms).toBeLessThan(3000 + 1500)
    // the kernel's immediate retry of the failed page is answered without a second wait
    const cfgDigest = `sha256:${dir.files['config.json']!.sha256}`
    expect(proxy.blobRequests().filter((e) => e.path.endsWith(cfgDigest)), JSON.stringify(proxy.log)).toHaveLength(1)

    // back: the same reads succeed on the same mount
    proxy.set({ blackhole: false })
    const again = await childRead(b, 0, 2 * MiB + 11)
    expect(again).toMatchObject({ ok: true, n: 2 * MiB + 11, sha: dir.files['weights/b.bin']!.sha256 })
    expect(await sha256File(cfg)).toBe(dir.files['config.json']!.sha256)
    await cli.unmount(mp)

    // pinned by digest, registry down: mounts from the cached index
    proxy.set({ down: true })
    const pinned = await cli.mount(`${proxy.host}/${repo}@${digest}`, mp, ['--read-timeout', '3'])
    expect(await readFile(pinned.logFile, 'utf8')).toMatch(/offline/)
    expect((await walk(mp)).files).toEqual(['config.json', 'weights/a.bin', 'weights/b.bin'])
    expect(await sha256File(b)).toBe(dir.files['weights/b.bin']!.sha256)
  })
})

// ---------------------------------------------------------------------------------------------------------

describe('a killed daemon', () => {
  it('leaves a stale mount (ENOTCONN) that the next mount and `cnaifs unmount` clear; the cache survives', async () => {
    const cli = await Session.create()
    const mp = await mountpoint()
    const ref = `${reg.host}/${refs.tar.repo}:v1`
    const first = await cli.mount(ref, mp)
    expect((await cli.status(mp)).pid).toBe(first.pid)
    await expectSameFiles(mp, model)
    // let the disk writes land (status counts blocks in memory too, so look at the disk); the empty file's
    // layer is never read, so it is the one blob not in the cache
    const blobs = Object.keys(MODEL_SPEC).length - 1
    await waitFor(async () => (await cli.run(['cache', 'verify'])).stdout.toString().includes(`verified ${blobs} complete`), 10_000, 'blocks on disk')

    process.kill(first.pid, 'SIGKILL')
    await waitFor(async () => !processRunning(first.pid), 5_000, 'the daemon to die')
    // A request that races the kernel's teardown of the connection gets ECONNABORTED; once it is over, ENOTCONN.
    await waitFor(async () => (await errnoOf(statfs(mp))) === 'ENOTCONN', 5_000, 'the kernel to end the connection')
    // (stat may still be answered from the kernel's attribute cache; these always reach the daemon)
    expect(await errnoOf(statfs(mp))).toBe('ENOTCONN')
    expect(await errnoOf(readdir(mp))).toBe('ENOTCONN')
    expect(await errnoOf(readFile(join(mp, 'README.md')))).toBe('ENOTCONN')
    expect(await isMounted(mp)).toBe(true)

    const second = await cli.mount(ref, mp)
    expect(second.pid).not.toBe(first.pid)
    await expectSameFiles(mp, model)
    const verify = await cli.run(['cache', 'verify'])
    expect(verify.code, describeResult(verify)).toBe(0)
    expect(verify.stdout.toString()).toContain(`verified ${blobs} complete blobs, 0 damaged`)

    // and `cnaifs unmount` clears a stale mount too
    process.kill(second.pid, 'SIGKILL')
    await waitFor(async () => !processRunning(second.pid), 5_000, 'the daemon to die')
    await waitFor(async () => (await errnoOf(statfs(mp))) === 'ENOTCONN', 5_000, 'the kernel to end the connection')
    expect(await errnoOf(statfs(mp))).toBe('ENOTCONN')
    const r = await cli.run(['unmount', mp], 20_000)
    expect(r.code, describeResult(r)).toBe(0)
    expect(r.stderr).toMatch(/stale/)
    expect(await isMounted(mp)).toBe(false)
    expect((await stat(mp)).isDirectory()).toBe(true)
    live.delete(mp)
  })
})

// ---------------------------------------------------------------------------------------------------------

describe('a read-only filesystem', () => {
  it('every kind of write fails with EROFS and changes nothing', async () => {
    const cli = await Session.create()
    const mp = await mountpoint()
    await cli.mount(`${reg.host}/${refs.tar.repo}:v1`, mp)
    const cfg = join(mp, 'config.json')
    const attempts: Record<string, () => Promise<unknown>> = {
      'write an existing file': () => writeFile(cfg, 'x'),
      'append': () => writeFile(cfg, 'x', { flag: 'a' }),
      'open read-write': () => open(cfg, 'r+').then((h) => h.close()),
      'create a file': () => writeFile(join(mp, 'new.txt'), 'x'),
      'create in a subdirectory': () => writeFile(join(mp, 'tokenizer', 'new.txt'), 'x'),
      'mkdir': () => mkdir(join(mp, 'newdir')),
      'unlink': () => unlink(cfg),
      'rm -r a directory': () => execFileAsync('rmdir', [join(mp, 'docs')]).catch((e: { stderr: string }) => {
        throw Object.assign(new Error(e.stderr), { code: /Read-only/.test(e.stderr) ? 'EROFS' : e.stderr })
      }),
      'rename': () => rename(cfg, join(mp, 'renamed.json')),
      'chmod': () => chmod(cfg, 0o777),
      'truncate': () => truncate(cfg, 0),
      'utimes': () => utimes(cfg, 1, 1),
    }
    for (const [what, attempt] of Object.entries(attempts)) expect(await errnoOf(attempt()), what).toBe('EROFS')
    await expectSameFiles(mp, model)
    expect((await walk(mp)).dirs).toEqual(['docs', 'scripts', 'tokenizer', 'tokenizer/vocab'])
  })
})

// ---------------------------------------------------------------------------------------------------------

describe('a corrupted blob in the registry', () => {
  let registry: RegistryProcess | undefined

  afterAll(async () => {
    await registry?.stop()
  })

  it('is caught: reads fail with EIO, no block of it stays cached, and the log names its digest', async () => {
    registry = await startRegistry()
    const src = await makeModelDir({ 'config.json': 100_000, 'weights/multi.bin': 3 * MiB + 5, 'README.md': 4_000 }, 'corrupt')
    const repo = uniqueRepo('corrupt')
    await pushModelDir(src.dir, `${registry.host}/${repo}:v1`)
    const blobFile = (hex: string) => join(registry!.storageDir, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data')
    const damage = async (hex: string): Promise<void> => {
      const file = blobFile(hex)
      expect(existsSync(file), file).toBe(true)
      const data = await readFile(file)
      for (let i = 0; i < data.length; i += 4096) data[i] = data[i]! ^ 0xff
      await writeFile(file, data) // same length
    }
    const small = src.files['config.json']!.sha256
    const multi = src.files['weights/multi.bin']!.sha256
    await damage(small)
    await damage(multi)

    const cli = await Session.create()
    const mp = await mountpoint()
    const { logFile } = await cli.mount(`${registry.host}/${repo}:v1`, mp)

    // smaller than one block: the very first read fails
    const first = await childRead(join(mp, 'config.json'), 0, 4096)
    expect(first).toMatchObject({ ok: false, code: 'EIO' })
    expect(await errnoOf(readFile(join(mp, 'config.json')))).toBe('EIO')
    // several blocks: reading the file through fails
    expect(await errnoOf(readFile(join(mp, 'weights/multi.bin')))).toBe('EIO')
    // an intact file of the same model is fine
    expect(await sha256File(join(mp, 'README.md'))).toBe(src.files['README.md']!.sha256)

    const s = await cli.status(mp)
    for (const p of ['config.json', 'weights/multi.bin']) expect(s.files.find((f) => f.path === p)?.cached, p).toBe(0)
    expect(await getfattr(join(mp, 'config.json'), 'user.cnaifs.cached')).toBe('0')
    expect(s.metrics.cnaifs_corrupt_blobs_total).toBeGreaterThanOrEqual(2)
    await new Promise((r) => setTimeout(r, 300))
    for (const hex of [small, multi]) expect(await cachedBlobFiles(cli.cacheDir, hex), hex).toEqual([])
    const log = await readFile(logFile, 'utf8')
    for (const hex of [small, multi]) {
      const line = log.split('\n').find((l) => l.includes(`sha256:${hex}`) && /"level":(50|60)/.test(l))
      expect(line, `an error naming sha256:${hex} in\n${log}`).toBeTruthy()
    }
  })
})

// ---------------------------------------------------------------------------------------------------------

describe('owners and extended attributes', () => {
  it('--uid/--gid override every owner; user.cnaifs.* xattrs name the blob and count cached bytes', async () => {
    const cli = await Session.create()
    const mp = await mountpoint()
    await cli.mount(`${reg.host}/${refs.raw.repo}:v1`, mp, ['--uid', '4321', '--gid', '8765'])
    for (const p of ['', 'tokenizer', 'tokenizer/vocab/merges.txt', 'model.safetensors', 'docs/EMPTY.md']) {
      const st = await stat(join(mp, p))
      expect([st.uid, st.gid], p || '/').toEqual([4321, 8765])
    }
    const ls = (await execFileAsync('ls', ['-ln', join(mp, 'scripts')])).stdout
    expect(ls).toMatch(/^-rwxr-xr-x 1 4321 8765 512 /m)

    const file = join(mp, 'model.safetensors')
    const { stdout: dump } = await execFileAsync('getfattr', ['-d', '-m', '^user\\.cnaifs\\.', file])
    expect(dump).toContain('user.cnaifs.digest=')
    expect(dump).toContain('user.cnaifs.mediatype=')
    expect(dump).toContain('user.cnaifs.cached=')
    expect(await getfattr(file, 'user.cnaifs.digest')).toMatch(/^sha256:[0-9a-f]{64}$/)
    // a raw layer is the file: its digest is the file's sha256
    expect(await getfattr(file, 'user.cnaifs.digest')).toBe(`sha256:${model.files['model.safetensors']!.sha256}`)
    expect(await getfattr(file, 'user.cnaifs.mediatype')).toMatch(/^application\/vnd\.cncf\.model\.weight\.v1\.raw$/)
    expect(await getfattr(file, 'user.cnaifs.cached')).toBe('0')

    const part = await childRead(file, 0, 2 * MiB)
    expect(part.ok).toBe(true)
    const partly = Number(await getfattr(file, 'user.cnaifs.cached'))
    expect(partly).toBeGreaterThanOrEqual(2 * MiB)
    await sha256File(file)
    expect(Number(await getfattr(file, 'user.cnaifs.cached'))).toBe(model.files['model.safetensors']!.size)
    // Directories carry no cnaifs attributes (ENODATA); setting any attribute is refused (EROFS).
    expect(await toolFailure(execFileAsync('getfattr', ['-n', 'user.cnaifs.digest', join(mp, 'tokenizer')]))).toEqual({ exit: 1, stderr: `${join(mp, 'tokenizer')}: user.cnaifs.digest: No such attribute\n` })
    expect(await toolFailure(execFileAsync('setfattr', ['-n', 'user.x', '-v', '1', file]))).toEqual({ exit: 1, stderr: `setfattr: ${file}: Read-only file system\n` })
  })
})

// ---------------------------------------------------------------------------------------------------------

describe('mount errors', () => {
  it('a bad reference: exit 2 with one line, and nothing mounted', async () => {
    const cli = await Session.create()
    const mp = await mountpoint()
    const r = await cli.tryMount('Not A Reference!!', mp, [], 20_000)
    expect(r.code, describeResult(r)).toBe(2)
    expect(r.stderr, describeResult(r)).toMatch(/^cnaifs: [^\n]+\n$/)
    expect(await isMounted(mp)).toBe(false)
    expect(await daemonPids(mp)).toEqual([])
  })

  it('an unreachable registry with nothing cached: exit 5, one line naming the registry, bounded time', async () => {
    const cli = await Session.create()
    const mp = await mountpoint()
    const host = `127.0.0.1:${await freePort()}`
    const r = await cli.tryMount(`${host}/e2e/nothing-here:v1`, mp, [], 30_000)
    expect(r.timedOut, describeResult(r)).toBe(false)
    expect(r.code, describeResult(r)).toBe(5)
    expect(r.stderr, describeResult(r)).toMatch(/^cnaifs: [^\n]+\n$/)
    expect(r.stderr).toContain(host)
    expect(r.durationMs).toBeLessThan(20_000)
    expect(await isMounted(mp)).toBe(false)
    expect(await daemonPids(mp)).toEqual([])
  })

  it('a missing tag: exit 4, one line naming it', async () => {
    const cli = await Session.create()
    const mp = await mountpoint()
    const r = await cli.tryMount(`${reg.host}/${refs.raw.repo}:no-such-tag`, mp, [], 30_000)
    expect(r.code, describeResult(r)).toBe(4)
    expect(r.stderr, describeResult(r)).toMatch(/^cnaifs: [^\n]*no-such-tag[^\n]*\n$/)
    expect(await isMounted(mp)).toBe(false)
    expect(await daemonPids(mp)).toEqual([])
  })

  it('a mount point that is a file: a clear error', async () => {
    const cli = await Session.create()
    const file = join(await tempDir('cnaifs-mp-'), 'a-file')
    await writeFile(file, 'not a directory')
    const r = await cli.tryMount(`${reg.host}/${refs.raw.repo}:v1`, file, [], 20_000)
    expect(r.code, describeResult(r)).toBe(2)
    expect(r.stderr, describeResult(r)).toMatch(/^cnaifs: [^\n]*not a directory[^\n]*\n$/)
    expect(await readFile(file, 'utf8')).toBe('not a directory')
  })

  it('a second mount on a live mount point fails clearly and leaves the first one serving', async () => {
    const cli = await Session.create()
    const mp = await mountpoint()
    const { pid } = await cli.mount(`${reg.host}/${refs.raw.repo}:v1`, mp)
    const r = await cli.tryMount(`${reg.host}/${refs.tar.repo}:v1`, mp, [], 30_000)
    expect(r.code, describeResult(r)).not.toBe(0)
    expect(r.stderr, describeResult(r)).toMatch(/^cnaifs: [^\n]*in use[^\n]*\n$/)
    expect(await daemonPids(mp)).toEqual([pid])
    expect((await cli.status(mp)).pid).toBe(pid)
    expect(await sha256File(join(mp, 'README.md'))).toBe(model.files['README.md']!.sha256)
    await cli.unmount(mp)
  })

  it('unmount of something not mounted: an error', async () => {
    const cli = await Session.create()
    const dir = await tempDir('cnaifs-mp-')
    const r = await cli.run(['unmount', dir], 20_000)
    expect(r.code, describeResult(r)).not.toBe(0)
    expect(r.stderr, describeResult(r)).toMatch(/^cnaifs: [^\n]*not mounted[^\n]*\n$/)
  })
})
