/**
 * Operating cnaifs like a real filesystem (issue 11): a mount's daemon found from its mount point alone
 * (status, prefetch, unmount without --cache-dir), unmount that waits for the daemon to exit, a cache only
 * its owner can read, a log on a full filesystem that never takes the daemon down, `mount -t fuse.cnaifs`
 * and fstab lines, damaged persisted state rebuilt (or, offline, one line naming the file), and `cache rm`
 * of compressed indexes. Real registry, real FUSE mounts, a real tmpfs, the real CLI and mount(8).
 */
import { execFile } from 'node:child_process'
import { chmod, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest'
import type {} from '../helpers/global-setup.js'
import { startProxy, type FaultProxy } from '../helpers/proxy.js'
import { REPO_ROOT, cleanupTempDirs, describeResult, makeModelDir, pushModelDir, runCli, sha256File, tempDir, uniqueRepo, type ModelDir } from '../helpers/cli.js'
import { entryPath, isSameProcess, processRunning, processStartTime } from '../../src/daemon/runtime-registry.js'
import { IndexStore } from '../../src/index/store.js'
import { parseMountOptions } from '../../src/cli/mount-options.js'

const execFileAsync = promisify(execFile)
const registry = inject('registry')
const MiB = 1024 * 1024
const RUNTIME_DIR = '/run/cnaifs'

let model: ModelDir
let ref: string
const mountpoints: string[] = []
const tmpfsMounts: string[] = []
const proxies: FaultProxy[] = []

async function isMounted(mp: string): Promise<boolean> {
  return (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').some((l) => l.split(' ')[4] === mp)
}

async function newMountpoint(): Promise<string> {
  const mp = join(await tempDir('cnaifs-mp-'), 'mnt')
  mountpoints.push(mp)
  return mp
}

interface StatusJson { pid: number; cacheDir?: string; log?: string; metrics: Record<string, number>; files: { path: string; size: number; cached: number }[] }

async function statusOf(mp: string): Promise<StatusJson> {
  const r = await runCli(['status', mp, '--json'])
  expect(r.code, describeResult(r)).toBe(0)
  return JSON.parse(r.stdout.toString()) as StatusJson
}

beforeAll(async () => {
  model = await makeModelDir({ 'config.json': '{"architecture":"test"}\n', 'weights/model.bin': 3 * MiB + 17, 'README.md': '# ops\n' })
  ref = `${registry.host}/${uniqueRepo('daemon-ops')}:v1`
  await pushModelDir(model.dir, ref)
})

afterEach(async () => {
  for (const mp of mountpoints.splice(0)) {
    if (await isMounted(mp)) await runCli(['unmount', mp], { timeoutMs: 30_000 })
    if (await isMounted(mp)) await execFileAsync('fusermount', ['-uz', mp]).catch(() => undefined)
  }
  for (const t of tmpfsMounts.splice(0)) await execFileAsync('umount', ['-l', t]).catch(() => undefined)
  for (const p of proxies.splice(0)) await p.stop()
})

afterAll(async () => {
  await cleanupTempDirs()
})

describe('a mount\'s daemon, found from its mount point alone', () => {
  it('status, prefetch and unmount need no --cache-dir; unmount returns once the daemon has exited', async () => {
    const cacheDir = await tempDir('cnaifs-cache-')
    const mp = await newMountpoint()
    const m = await runCli(['--cache-dir', cacheDir, 'mount', ref, mp], { timeoutMs: 60_000 })
    expect(m.code, describeResult(m)).toBe(0)
    const entryFile = entryPath(RUNTIME_DIR, mp)
    const entry = JSON.parse(await readFile(entryFile, 'utf8')) as { pid: number; pidStartTime: number; cacheDir: string; log: string; controlSocket: string }
    expect((await stat(entryFile)).mode & 0o777).toBe(0o600)
    expect(entry.cacheDir).toBe(cacheDir)
    expect(m.stdout.toString()).toMatch(new RegExp(`; log: ${entry.log.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\n$`))

    const s = await statusOf(mp)
    expect([s.pid, s.cacheDir, s.log]).toEqual([entry.pid, cacheDir, entry.log])
    const pre = await runCli(['prefetch', '--no-progress', mp])
    expect(pre.code, describeResult(pre)).toBe(0)
    expect((await statusOf(mp)).files.map((f) => f.cached)).toEqual((await statusOf(mp)).files.map((f) => f.size))

    const un = await runCli(['unmount', mp], { timeoutMs: 30_000 })
    expect(un.code, describeResult(un)).toBe(0)
    expect(un.stdout.toString()).toBe(`unmounted ${mp}\n`)
    // When unmount reports success the daemon is gone, its mount and its registry entry with it.
    expect(isSameProcess(entry.pid, entry.pidStartTime)).toBe(false)
    expect(await isMounted(mp)).toBe(false)
    await expect(stat(entryFile)).rejects.toMatchObject({ code: 'ENOENT' })
    const after = await runCli(['status', mp])
    expect(after.code).toBe(2)
    expect(after.stderr).toBe(`cnaifs: ${mp}: no cnaifs daemon serves this mount point\n`)
  })

  it('a SIGKILLed daemon\'s entry is ignored and removed, and unmount clears the stale mount', async () => {
    const cacheDir = await tempDir('cnaifs-cache-')
    const mp = await newMountpoint()
    expect((await runCli(['--cache-dir', cacheDir, 'mount', ref, mp], { timeoutMs: 60_000 })).code).toBe(0)
    const entryFile = entryPath(RUNTIME_DIR, mp)
    const { pid } = JSON.parse(await readFile(entryFile, 'utf8')) as { pid: number }
    process.kill(pid, 'SIGKILL')
    for (let i = 0; i < 100 && processRunning(pid); i++) await new Promise((r) => setTimeout(r, 50))
    const s = await runCli(['status', mp])
    expect(s.code).toBe(2)
    await expect(stat(entryFile)).rejects.toMatchObject({ code: 'ENOENT' })
    const un = await runCli(['unmount', mp], { timeoutMs: 30_000 })
    expect(un.code, describeResult(un)).toBe(0)
    expect(un.stderr).toBe(`cleared a stale mount at ${mp}\n`)
    expect(await isMounted(mp)).toBe(false)
  })

  it('unmount fails, and says so, while the daemon does not exit; a second mount on the mount point is refused', async () => {
    const cacheDir = await tempDir('cnaifs-cache-')
    const mp = await newMountpoint()
    expect((await runCli(['--cache-dir', cacheDir, 'mount', ref, mp], { timeoutMs: 60_000 })).code).toBe(0)
    const { pid, pidStartTime } = JSON.parse(await readFile(entryPath(RUNTIME_DIR, mp), 'utf8')) as { pid: number; pidStartTime: number }
    const again = await runCli(['mount', ref, mp], { timeoutMs: 30_000 })
    expect(again.code, describeResult(again)).toBe(1)
    expect(again.stderr).toBe(`cnaifs: ${mp} is in use: cnaifs daemon ${pid} serves ${ref} there (cnaifs unmount ${mp} first)\n`)

    // A stopped process cannot act on SIGTERM: the daemon outlives the timeout.
    process.kill(pid, 'SIGSTOP')
    try {
      const un = await runCli(['unmount', '--timeout', '2', mp], { timeoutMs: 30_000 })
      expect(un.code, describeResult(un)).toBe(1)
      expect(un.stderr).toBe(`cnaifs: the daemon of ${mp} (pid ${pid}) is still running 2 s after SIGTERM and the mount is still there (files open? use --lazy)\n`)
      expect(un.stdout.toString()).toBe('')
    } finally {
      process.kill(pid, 'SIGCONT')
    }
    // The pending SIGTERM is delivered now: the daemon unmounts and exits.
    for (let i = 0; i < 200 && isSameProcess(pid, pidStartTime); i++) await new Promise((r) => setTimeout(r, 50))
    expect(isSameProcess(pid, pidStartTime)).toBe(false)
    expect(await isMounted(mp)).toBe(false)
  })
})

describe('a cache only its owner can read', () => {
  it('a root mount\'s index, tag records, socket, log and runtime entry are 0600 in 0700 directories; nobody reads them', async () => {
    const cacheDir = join(await tempDir('cnaifs-cache-'), 'cache')
    // A cache an older version left: world-readable directories and files.
    await mkdir(join(cacheDir, 'index', 'refs'), { recursive: true, mode: 0o755 })
    await writeFile(join(cacheDir, 'index', 'refs', 'old.json'), '{}')
    await chmod(join(cacheDir, 'index', 'refs', 'old.json'), 0o644)
    await chmod(cacheDir, 0o755)
    await chmod(join(cacheDir, '..'), 0o755)
    const mp = await newMountpoint()
    const m = await runCli(['--cache-dir', cacheDir, 'mount', ref, mp], { timeoutMs: 60_000, env: { CNAIFS_LOG_DIR: '' } })
    expect(m.code, describeResult(m)).toBe(0)
    expect(await sha256File(join(mp, 'weights/model.bin'))).toBe(model.files['weights/model.bin']!.sha256)
    const entry = JSON.parse(await readFile(entryPath(RUNTIME_DIR, mp), 'utf8')) as { log: string; controlSocket: string }
    // The background daemon's default log is outside the cache.
    expect(entry.log).toBe(`/var/log/cnaifs/mount-${mp.replace(/[^a-zA-Z0-9]+/g, '_').replace(/^_|_$/g, '')}.log`)

    const index = new IndexStore(cacheDir)
    const indexFiles = (await readdir(index.dir)).filter((n) => n.endsWith('.json')).map((n) => join(index.dir, n))
    const refFiles = (await readdir(join(index.dir, 'refs'))).map((n) => join(index.dir, 'refs', n))
    expect(indexFiles).toHaveLength(1)
    const mode = async (p: string) => (await stat(p)).mode & 0o777
    for (const d of [cacheDir, index.dir, join(index.dir, 'refs'), join(cacheDir, 'run'), '/var/log/cnaifs', join(RUNTIME_DIR, 'mounts')]) expect(await mode(d), d).toBe(0o700)
    for (const f of [...indexFiles, ...refFiles, entry.controlSocket, entry.log, entryPath(RUNTIME_DIR, mp)]) expect(await mode(f), f).toBe(0o600)

    // Another local user reaches none of it, though the mount itself is the only thing it could be given.
    for (const p of [indexFiles[0]!, join(cacheDir, 'blobs'), entry.log]) {
      const r = await execFileAsync('runuser', ['-u', 'nobody', '--', 'cat', p]).then(() => 'read', (e: { stderr: string }) => e.stderr)
      expect(r, p).toMatch(/Permission denied/)
    }
    const ls = await execFileAsync('runuser', ['-u', 'nobody', '--', 'ls', cacheDir]).then(() => 'listed', (e: { stderr: string }) => e.stderr)
    expect(ls).toMatch(/Permission denied/)
    await rm(entry.log, { force: true })
  })
})

describe('logging on a full filesystem', () => {
  it('the daemon keeps serving, counts the lines it could not write, and says so once when it can', async () => {
    const full = await tempDir('cnaifs-full-')
    await execFileAsync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0755', 'tmpfs', full])
    tmpfsMounts.push(full)
    await writeFile(join(full, 'daemon.log'), '')
    await execFileAsync('dd', ['if=/dev/zero', `of=${join(full, 'filler')}`, 'bs=4k']).catch(() => undefined) // stops at ENOSPC
    expect((await execFileAsync('df', ['--output=avail', '-B1', full])).stdout.trim().split('\n')[1]!.trim()).toBe('0')

    const cacheDir = await tempDir('cnaifs-cache-')
    const mp = await newMountpoint()
    const m = await runCli(['--cache-dir', cacheDir, '-d', 'mount', ref, mp, '--log-file', join(full, 'daemon.log')], { timeoutMs: 60_000 })
    expect(m.code, describeResult(m)).toBe(0)
    const before = await statusOf(mp)
    for (const f of ['config.json', 'weights/model.bin', 'README.md']) expect(await sha256File(join(mp, f)), f).toBe(model.files[f]!.sha256)
    const during = await statusOf(mp)
    expect(during.pid).toBe(before.pid)
    expect(during.metrics.cnaifs_log_dropped_lines).toBeGreaterThan(0)
    expect(await readFile(join(full, 'daemon.log'), 'utf8')).toBe('')

    await rm(join(full, 'filler'))
    const un = await runCli(['unmount', mp], { timeoutMs: 30_000 })
    expect(un.code, describeResult(un)).toBe(0)
    const lines = (await readFile(join(full, 'daemon.log'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { msg: string; droppedLines?: number; error?: string })
    const notices = lines.filter((l) => l.droppedLines !== undefined)
    expect(notices).toHaveLength(1)
    expect(lines[0]).toBe(notices[0])
    expect(notices[0]).toMatchObject({ error: 'ENOSPC', msg: `${notices[0]!.droppedLines} log lines were dropped: the log could not be written (ENOSPC)` })
    expect(notices[0]!.droppedLines).toBeGreaterThanOrEqual(during.metrics.cnaifs_log_dropped_lines!)
    expect(lines.some((l) => l.msg === 'unmounted')).toBe(true)
  })
})

describe('mount(8)', () => {
  let helperInstalled = false
  beforeAll(async () => {
    const { stdout } = await execFileAsync('bash', [join(REPO_ROOT, 'scripts', 'install-mount-helper')])
    expect(stdout.trim()).toBe('/sbin/mount.fuse.cnaifs')
    helperInstalled = true
  })
  afterAll(async () => {
    // Remove the helper only if it is still this checkout's (another checkout may have installed its own since).
    const text = await readFile('/sbin/mount.fuse.cnaifs', 'utf8').catch(() => '')
    if (helperInstalled && text.includes(REPO_ROOT.replace(/\/$/, ''))) await rm('/sbin/mount.fuse.cnaifs', { force: true })
  })

  it('mount -t fuse.cnaifs REF MP -o key=value,… mounts; cnaifs unmount stops it', async () => {
    const cacheDir = await tempDir('cnaifs-cache-')
    const mp = await newMountpoint()
    await mkdir(mp, { recursive: true })
    const log = join(cacheDir, 'daemon.log')
    const r = await execFileAsync('mount', ['-t', 'fuse.cnaifs', ref, mp, '-o', `ro,cache_dir=${cacheDir},read_timeout=10,prefetch=meta,uid=4321,log_file=${log}`], { timeout: 60_000 })
    expect(r.stdout).toMatch(new RegExp(`^mounted ${ref.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(sha256:[0-9a-f]{64}\\) at ${mp} in `))
    expect(await isMounted(mp)).toBe(true)
    expect(await sha256File(join(mp, 'config.json'))).toBe(model.files['config.json']!.sha256)
    expect((await stat(join(mp, 'config.json'))).uid).toBe(4321)
    expect(await statusOf(mp)).toMatchObject({ cacheDir, log })
    const un = await runCli(['unmount', mp], { timeoutMs: 30_000 })
    expect(un.code, describeResult(un)).toBe(0)
    expect(await isMounted(mp)).toBe(false)
  })

  it('an fstab line of type fuse.cnaifs mounts with mount -a -T FILE', async () => {
    const cacheDir = await tempDir('cnaifs-cache-')
    const mp = await newMountpoint()
    await mkdir(mp, { recursive: true })
    const fstab = join(await tempDir('cnaifs-fstab-'), 'fstab')
    await writeFile(fstab, `# a model, mounted at boot\n${ref} ${mp} fuse.cnaifs defaults,_netdev,nofail,x-systemd.after=network-online.target,allow_other,cache_dir=${cacheDir},cache_max_size=1G,log_file=${join(cacheDir, 'daemon.log')} 0 0\n`)
    await execFileAsync('mount', ['-a', '-T', fstab, '-t', 'fuse.cnaifs'], { timeout: 60_000 })
    expect(await isMounted(mp)).toBe(true)
    expect(await sha256File(join(mp, 'weights/model.bin'))).toBe(model.files['weights/model.bin']!.sha256)
    // allow_other reached the mount: another user can read through it.
    await chmod(join(mp, '..'), 0o755) // a temp dir is 0700: let nobody reach the mount point
    const { stdout } = await execFileAsync('runuser', ['-u', 'nobody', '--', 'cat', join(mp, 'README.md')])
    expect(stdout).toBe('# ops\n')
    const un = await runCli(['unmount', mp], { timeoutMs: 30_000 })
    expect(un.code, describeResult(un)).toBe(0)
    expect(await isMounted(mp)).toBe(false)
  })

  it('the example .mount unit passes systemd-analyze verify, and its Options are valid cnaifs mount options', async () => {
    const text = await readFile(join(REPO_ROOT, 'systemd', 'mnt-models-llama.mount'), 'utf8')
    expect(text).toMatch(/^Type=fuse\.cnaifs$/m)
    expect(text).toMatch(/^Where=\/mnt\/models\/llama$/m)
    const options = /^Options=(.*)$/m.exec(text)?.[1]
    expect(parseMountOptions([options!])).toMatchObject({ command: { allowOther: true, cacheMaxSize: '50G', prefetch: 'meta', readTimeout: '30' }, global: { cacheDir: '/var/lib/cnaifs' } })
    const dir = await tempDir('cnaifs-unit-')
    await writeFile(join(dir, 'mnt-models-llama.mount'), text)
    const { stdout, stderr } = await execFileAsync('systemd-analyze', ['verify', '--man=no', join(dir, 'mnt-models-llama.mount')])
    expect(stdout + stderr).toBe('')
  })

  it('the -f (fake) flag and unknown options: nothing mounted, one clear line', async () => {
    const mp = await newMountpoint()
    await mkdir(mp, { recursive: true })
    await execFileAsync('mount', ['-f', '-t', 'fuse.cnaifs', ref, mp])
    expect(await isMounted(mp)).toBe(false)
    const bad = await execFileAsync('mount', ['-t', 'fuse.cnaifs', ref, mp, '-o', 'no_such_option=1']).then(() => undefined, (e: { code: number; stderr: string }) => e)
    expect(bad?.stderr).toMatch(/^cnaifs: unknown mount option "no_such_option" \(known: /)
    expect(await isMounted(mp)).toBe(false)
  })
})

describe('persisted state', () => {
  it('a wrong-shaped index is rebuilt with one warning; offline it fails with one line naming the file', async () => {
    const proxy = await startProxy(registry.url)
    proxies.push(proxy)
    const cacheDir = await tempDir('cnaifs-cache-')
    const viaProxy = ref.replace(registry.host, proxy.host)
    const first = await runCli(['--cache-dir', cacheDir, 'ls', '-R', viaProxy])
    expect(first.code, describeResult(first)).toBe(0)
    const store = new IndexStore(cacheDir)
    const [name] = (await readdir(store.dir)).filter((n) => n.endsWith('.json'))
    const file = join(store.dir, name!)
    const good = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>

    await writeFile(file, JSON.stringify({ ...good, entries: 'garbage' }))
    const rebuilt = await runCli(['--cache-dir', cacheDir, 'ls', '-R', viaProxy])
    expect(rebuilt.code, describeResult(rebuilt)).toBe(0)
    expect(rebuilt.stdout.toString()).toBe(first.stdout.toString())
    const warnings = rebuilt.stderr.trim().split('\n')
    expect(warnings).toHaveLength(1)
    expect(JSON.parse(warnings[0]!)).toMatchObject({ level: 40, file, msg: `the cached index ${file} is invalid (checksum: does not match the content (${JSON.parse(warnings[0]!).reason.match(/sha256:[0-9a-f]{64}/)?.[0]}): the file is damaged or was edited): rebuilding it from the registry` })
    expect((await store.read(`sha256:${name!.slice(0, 64)}`)).state).toBe('ok')

    await writeFile(file, JSON.stringify({ ...good, checksum: undefined, version: 1, entries: [{ path: 7, kind: 'file' }] }))
    proxy.set({ down: true })
    const offline = await runCli(['--cache-dir', cacheDir, 'ls', viaProxy], { timeoutMs: 60_000 })
    expect(offline.code, describeResult(offline)).toBe(5)
    expect(offline.stderr).toMatch(new RegExp(`^cnaifs: [^\\n]*; and the cached index ${file} is invalid \\(entries\\[0\\]\\.path: expected a string, got 7\\) \\(remove it, or retry when the registry answers\\)\\n$`))
  })

  it('cache rm removes the compressed-layer indexes of the model', async () => {
    const cacheDir = await tempDir('cnaifs-cache-')
    const gzRef = `${registry.host}/${uniqueRepo('rm-compressed')}:v1`
    const push = await runCli(['push', '--no-progress', '--format', 'tar+gzip', model.dir, gzRef])
    expect(push.code, describeResult(push)).toBe(0)
    const ls = await runCli(['--cache-dir', cacheDir, 'ls', gzRef])
    expect(ls.code, describeResult(ls)).toBe(0)
    const compressed = (await readdir(join(cacheDir, 'compressed'))).sort()
    expect(compressed.filter((n) => n.endsWith('.json'))).toHaveLength(3)
    expect(compressed.filter((n) => n.endsWith('.bin'))).toHaveLength(3)
    const rmr = await runCli(['--cache-dir', cacheDir, 'cache', 'rm', gzRef])
    expect(rmr.code, describeResult(rmr)).toBe(0)
    expect(rmr.stdout.toString()).toMatch(/: index, 3 blobs and 3 compressed-layer indexes\n$/)
    expect(await readdir(join(cacheDir, 'compressed'))).toEqual([])
  })
})
