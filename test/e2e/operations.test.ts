/**
 * Running cnaifs on a node (issue 5): the systemd unit, readiness through NOTIFY_SOCKET (a real unix datagram
 * receiver), Prometheus metrics, `status`, `prefetch`, `--prefetch` at mount time, cache management, and
 * structured logs without credentials. Real registry, real FUSE mounts, the real CLI.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { readFile, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest'
import type {} from '../helpers/global-setup.js'
import { startProxy } from '../helpers/proxy.js'
import { CLI_BIN, REPO_ROOT, cleanupTempDirs, describeResult, makeModelDir, runCli, sha256File, tempDir, uniqueRepo, type ModelDir } from '../helpers/cli.js'

const execFileAsync = promisify(execFile)
const registry = inject('registry')
const basic = inject('basicRegistry')

interface StatusJson { pid: number; files: { path: string; size: number; cached: number }[]; metrics: Record<string, number>; digest: string }

const mounted: { mp: string; cacheDir: string }[] = []

async function mount(ref: string, mp: string, cacheDir: string, extra: string[] = []): Promise<void> {
  const r = await runCli(['--cache-dir', cacheDir, 'mount', ref, mp, ...extra], { timeoutMs: 60_000 })
  expect(r.code, describeResult(r)).toBe(0)
  mounted.push({ mp, cacheDir })
}

async function status(mp: string, cacheDir: string): Promise<StatusJson> {
  const r = await runCli(['--cache-dir', cacheDir, 'status', mp, '--json'])
  expect(r.code, describeResult(r)).toBe(0)
  return JSON.parse(r.stdout.toString()) as StatusJson
}

async function freePort(): Promise<number> {
  return new Promise((ok) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => ok(port))
    })
  })
}

async function isMounted(mp: string): Promise<boolean> {
  return (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').some((l) => l.split(' ')[4] === mp)
}

async function waitFor(what: string, cond: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await cond()) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`timed out waiting for ${what}`)
}

let model: ModelDir
let ref: string

beforeAll(async () => {
  model = await makeModelDir({
    'config.json': '{"architectures":["Test"]}\n',
    'tokenizer.json': 300_000,
    'README.md': '# test model\n',
    'model-00001-of-00002.safetensors': 3 * 1024 * 1024 + 17,
    'model-00002-of-00002.safetensors': 2 * 1024 * 1024 + 5,
  })
  ref = `${registry.host}/${uniqueRepo('ops')}:v1`
  const r = await runCli(['push', '--format', 'tar', '--no-progress', model.dir, ref], { timeoutMs: 60_000 })
  expect(r.code, describeResult(r)).toBe(0)
})

afterEach(async () => {
  for (const m of mounted.splice(0)) {
    if (await isMounted(m.mp)) await runCli(['--cache-dir', m.cacheDir, 'unmount', m.mp])
  }
})

afterAll(cleanupTempDirs)

describe('systemd', () => {
  it('the template unit passes systemd-analyze verify and is a notify service', async () => {
    const dir = await tempDir('cnaifs-unit-')
    const unit = (await readFile(join(REPO_ROOT, 'systemd', 'cnaifs@.service'), 'utf8')).replaceAll('/usr/local/bin/cnaifs', CLI_BIN)
    expect(unit).toMatch(/^Type=notify$/m)
    expect(unit).toMatch(/^NotifyAccess=all$/m)
    expect(unit).toMatch(/^Restart=on-failure$/m)
    expect(unit).toMatch(/^ExecStart=.* mount --foreground .*\$\{REFERENCE\} \$\{MOUNTPOINT\}$/m)
    await writeFile(join(dir, 'cnaifs@models.service'), unit)
    const { stdout, stderr } = await execFileAsync('systemd-analyze', ['verify', join(dir, 'cnaifs@models.service')])
    expect(stdout + stderr).toBe('')
  })

  it('sends STATUS lines, READY=1 only once the tree is visible, and STOPPING=1 on SIGTERM', async () => {
    const dir = await tempDir('cnaifs-notify-')
    const sock = join(dir, 'notify.sock')
    const log = join(dir, 'messages')
    // A real AF_UNIX datagram receiver: on each message it records whether the mount is already visible.
    const mp = join(dir, 'mnt')
    const receiver = spawn('python3', ['-c', `
import socket, os, sys, json
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1]); s.settimeout(60)
out = open(sys.argv[2], 'a')
print('listening', flush=True)
while True:
    msg = s.recv(65536).decode()
    visible = os.path.isdir(sys.argv[3]) and len(os.listdir(sys.argv[3])) > 0 if 'READY=1' in msg else None
    out.write(json.dumps({'msg': msg, 'visible': visible}) + '\\n'); out.flush()
`, sock, log, mp], { stdio: ['ignore', 'pipe', 'inherit'] })
    await new Promise<void>((ok) => receiver.stdout?.once('data', () => ok()))
    const cacheDir = await tempDir('cnaifs-cache-')
    const daemon = spawn(process.execPath, [CLI_BIN, '--cache-dir', cacheDir, 'mount', '--foreground', ref, mp], {
      env: { ...process.env, NOTIFY_SOCKET: sock }, stdio: ['ignore', 'ignore', 'pipe'],
    })
    try {
      const messages = async () => (await readFile(log, 'utf8').catch(() => '')).trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; visible: boolean | null })
      await waitFor('READY=1', async () => (await messages()).some((m) => m.msg.includes('READY=1')), 30_000)
      const all = await messages()
      const readyIndex = all.findIndex((m) => m.msg.includes('READY=1'))
      expect(all[readyIndex].visible).toBe(true)
      expect(all.slice(0, readyIndex).some((m) => /STATUS=resolving/.test(m.msg))).toBe(true)
      expect(all.every((m) => m.msg.includes(`MAINPID=${daemon.pid}`) || m.msg === 'BARRIER=1')).toBe(true)
      daemon.kill('SIGTERM')
      await new Promise((ok) => daemon.once('exit', ok))
      await waitFor('STOPPING=1', async () => (await messages()).some((m) => m.msg.includes('STOPPING=1')))
      expect(await isMounted(mp)).toBe(false)
    } finally {
      daemon.kill('SIGKILL')
      receiver.kill('SIGKILL')
      await execFileAsync('fusermount', ['-uz', mp]).catch(() => undefined)
    }
  })
})

describe('metrics, status and prefetch', () => {
  it('serves Prometheus metrics that count fetched bytes, requests, cache hits and reads', async () => {
    const cacheDir = await tempDir('cnaifs-cache-')
    const mp = join(await tempDir('cnaifs-mp-'), 'mnt')
    const port = await freePort()
    await mount(ref, mp, cacheDir, ['--metrics-addr', `127.0.0.1:${port}`])
    const file = join(mp, 'model-00001-of-00002.safetensors')
    expect(await sha256File(file)).toBe(model.files['model-00001-of-00002.safetensors'].sha256)
    // Blocks reach the disk after the read returns (the reader does not wait for fsync): poll, bounded.
    let text = ''
    await waitFor('blocks on disk', async () => {
      const res = await fetch(`http://127.0.0.1:${port}/metrics`)
      expect(res.status).toBe(200)
      text = await res.text()
      return /^cnaifs_cache_disk_bytes\{[^}]*\} ([0-9.e+]+)$/m.test(text) && Number(/^cnaifs_cache_disk_bytes\{[^}]*\} ([0-9.e+]+)$/m.exec(text)?.[1]) >= 3 * 1024 * 1024
    })
    const value = (name: string) => {
      const line = text.split('\n').find((l) => l.startsWith(name + '{') || l.startsWith(name + ' '))
      expect(line, `${name} in\n${text.slice(0, 3000)}`).toBeDefined()
      return Number(line?.split(' ').pop())
    }
    expect(value('cnaifs_registry_fetched_bytes_total')).toBeGreaterThanOrEqual(3 * 1024 * 1024)
    expect(text).toMatch(/cnaifs_registry_requests_total\{[^}]*kind="blob"[^}]*status="206"/)
    expect(value('cnaifs_cache_misses_total')).toBeGreaterThan(0)
    expect(value('cnaifs_read_duration_seconds_count')).toBeGreaterThan(0)
    expect(value('cnaifs_reads_in_flight')).toBe(0)
    expect(value('cnaifs_reads_older_than_5s')).toBe(0)
    expect(value('cnaifs_cache_disk_bytes')).toBeGreaterThanOrEqual(3 * 1024 * 1024)
    expect(text).toContain(`mount="${mp}"`)
  })

  it('status shows per-file cache fill; prefetch of one path fills exactly that file', async () => {
    const cacheDir = await tempDir('cnaifs-cache-')
    const mp = join(await tempDir('cnaifs-mp-'), 'mnt')
    await mount(ref, mp, cacheDir)
    const before = await status(mp, cacheDir)
    expect(before.files.map((f) => f.path).sort()).toEqual(Object.keys(model.files).sort())
    expect(before.files.every((f) => f.cached === 0)).toBe(true)

    const r = await runCli(['--cache-dir', cacheDir, 'prefetch', mp, 'model-00002-of-00002.safetensors'], { timeoutMs: 60_000 })
    expect(r.code, describeResult(r)).toBe(0)
    expect(r.stderr).toMatch(/100\.0%/) // the progress bar reached the end
    const after = await status(mp, cacheDir)
    for (const f of after.files) {
      expect(f.cached, f.path).toBe(f.path === 'model-00002-of-00002.safetensors' ? f.size : 0)
    }
    const plain = await runCli(['--cache-dir', cacheDir, 'status', mp])
    expect(plain.stdout.toString()).toMatch(/model-00002-of-00002\.safetensors\s+\d+\s+\d+\s+100\.0/)
  })

  it('--prefetch meta brings configs and docs, --prefetch all every file', async () => {
    const cacheDir = await tempDir('cnaifs-cache-')
    const mp = join(await tempDir('cnaifs-mp-'), 'mnt')
    await mount(ref, mp, cacheDir, ['--prefetch', 'meta'])
    await waitFor('meta prefetch', async () => {
      const s = await status(mp, cacheDir)
      return ['config.json', 'tokenizer.json', 'README.md'].every((p) => s.files.find((f) => f.path === p)?.cached === s.files.find((f) => f.path === p)?.size)
    })
    const s = await status(mp, cacheDir)
    expect(s.files.filter((f) => f.path.endsWith('.safetensors')).every((f) => f.cached === 0)).toBe(true)
    await runCli(['--cache-dir', cacheDir, 'unmount', mp])

    await mount(ref, mp, cacheDir, ['--prefetch', 'all'])
    await waitFor('full prefetch', async () => (await status(mp, cacheDir)).files.every((f) => f.cached === f.size))
  })

  it('prefetch REF fills the cache without a mount, and a later mount reads it with the registry gone', async () => {
    const proxy = await startProxy(registry.url)
    try {
      const viaProxy = ref.replace(registry.host, proxy.host)
      const cacheDir = await tempDir('cnaifs-cache-')
      const r = await runCli(['--cache-dir', cacheDir, 'prefetch', '--no-progress', viaProxy], { timeoutMs: 60_000 })
      expect(r.code, describeResult(r)).toBe(0)
      const ls = await runCli(['--cache-dir', cacheDir, 'cache', 'ls', '--json'])
      const rows = JSON.parse(ls.stdout.toString()) as { reference: string; size: number; cached: number }[]
      expect(rows).toHaveLength(1)
      expect(rows[0].cached).toBe(rows[0].size)

      proxy.set({ down: true })
      const mp = join(await tempDir('cnaifs-mp-'), 'mnt')
      await mount(viaProxy, mp, cacheDir, ['--read-timeout', '3'])
      for (const f of Object.keys(model.files)) expect(await sha256File(join(mp, f))).toBe(model.files[f].sha256)
    } finally {
      await proxy.stop()
    }
  })
})

describe('cache management', () => {
  it('ls, du, verify, prune and rm', async () => {
    const cacheDir = await tempDir('cnaifs-cache-')
    const other = await makeModelDir({ 'weights.bin': 1024 * 1024 + 3, 'config.json': '{}' }, 'other')
    const otherRef = `${registry.host}/${uniqueRepo('ops-other')}:v1`
    expect((await runCli(['push', '--no-progress', other.dir, otherRef])).code).toBe(0)
    for (const r of [ref, otherRef]) {
      const p = await runCli(['--cache-dir', cacheDir, 'prefetch', '--no-progress', r], { timeoutMs: 60_000 })
      expect(p.code, describeResult(p)).toBe(0)
    }
    const ls = await runCli(['--cache-dir', cacheDir, 'cache', 'ls'])
    expect(ls.stdout.toString()).toContain(ref)
    expect(ls.stdout.toString()).toContain(otherRef)
    const du = await runCli(['--cache-dir', cacheDir, 'cache', 'du'])
    expect(du.stdout.toString()).toMatch(/total .* in 7 blobs/)

    const verify = await runCli(['--cache-dir', cacheDir, 'cache', 'verify'])
    expect(verify.code, describeResult(verify)).toBe(0)
    expect(verify.stdout.toString()).toMatch(/verified 7 complete blobs, 0 damaged/)

    // Damage one blob's data file on disk (same length): verify finds it, removes it and exits 6.
    const blobs = join(cacheDir, 'blobs')
    const shard = (await readdir(blobs)).find((d) => /^[0-9a-f]{2}$/.test(d)) as string
    const dataFile = join(blobs, shard, (await readdir(join(blobs, shard))).find((n) => n.endsWith('.data'))!)
    const data = await readFile(dataFile)
    data[0] ^= 0xff
    await writeFile(dataFile, data)
    const bad = await runCli(['--cache-dir', cacheDir, 'cache', 'verify'])
    expect(bad.code, describeResult(bad)).toBe(6)
    expect(bad.stdout.toString()).toMatch(/BAD sha256:[0-9a-f]{64}: removed/)

    const rm = await runCli(['--cache-dir', cacheDir, 'cache', 'rm', otherRef])
    expect(rm.code, describeResult(rm)).toBe(0)
    const ls2 = JSON.parse((await runCli(['--cache-dir', cacheDir, 'cache', 'ls', '--json'])).stdout.toString()) as { reference: string }[]
    expect(ls2.map((r) => r.reference)).toEqual([ref])

    const prune = await runCli(['--cache-dir', cacheDir, 'cache', 'prune', '--max-size', '1M'])
    expect(prune.code, describeResult(prune)).toBe(0)
    const du2 = await runCli(['--cache-dir', cacheDir, 'cache', 'du'])
    const total = Number(/\((\d+) bytes\)/.exec(du2.stdout.toString())?.[1])
    expect(total).toBeLessThanOrEqual(1024 * 1024)

    const missing = await runCli(['--cache-dir', cacheDir, 'cache', 'rm', `${registry.host}/nope/never:v1`])
    expect(missing.code).toBe(2)
    expect(missing.stderr.trim().split('\n')).toHaveLength(1)
  })

  it('--cache-max-size keeps a mount\'s disk cache bounded', async () => {
    const cacheDir = await tempDir('cnaifs-cache-')
    const mp = join(await tempDir('cnaifs-mp-'), 'mnt')
    await mount(ref, mp, cacheDir, ['--cache-max-size', '4M'])
    for (const f of Object.keys(model.files)) expect(await sha256File(join(mp, f))).toBe(model.files[f].sha256)
    const s = await status(mp, cacheDir)
    expect(s.metrics['cnaifs_cache_disk_bytes']).toBeLessThanOrEqual(4 * 1024 * 1024)
  })
})

describe('logs', () => {
  it('one structured line per mount and unmount with reference and digest, credentials redacted', async () => {
    const repo = `${basic.host}/${uniqueRepo('ops-logs')}:v1`
    const push = await runCli(['push', '--no-progress', '--username', basic.username, '--password-stdin', model.dir, repo], { input: basic.password, timeoutMs: 60_000 })
    expect(push.code, describeResult(push)).toBe(0)
    const cacheDir = await tempDir('cnaifs-cache-')
    const mp = join(await tempDir('cnaifs-mp-'), 'mnt')
    const logFile = join(cacheDir, 'mount.log')
    const r = await runCli(['--cache-dir', cacheDir, '--log-level', 'debug', 'mount', '--username', basic.username, '--password-stdin', '--log-file', logFile, repo, mp], { input: basic.password, timeoutMs: 60_000 })
    expect(r.code, describeResult(r)).toBe(0)
    mounted.push({ mp, cacheDir })
    expect(await sha256File(join(mp, 'config.json'))).toBe(model.files['config.json'].sha256)
    const u = await runCli(['--cache-dir', cacheDir, 'unmount', mp])
    expect(u.code, describeResult(u)).toBe(0)
    await waitFor('unmount log line', async () => (await readFile(logFile, 'utf8')).includes('"event":"unmount"'))
    const text = await readFile(logFile, 'utf8')
    const lines = text.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
    const mountLine = lines.find((l) => l.event === 'mount')
    expect(mountLine?.reference).toBe(repo)
    expect(mountLine?.digest).toMatch(/^sha256:[0-9a-f]{64}$/)
    expect(lines.find((l) => l.event === 'unmount')?.reference).toBe(repo)
    expect(text).not.toContain(basic.password)
    expect(text).not.toContain(Buffer.from(`${basic.username}:${basic.password}`).toString('base64'))
  })
})

