/**
 * The operating parts that need no registry (issue 11): -o mount options and the mount(8) helper's
 * arguments, the runtime registry of daemons (real processes, real /proc), logging that survives a failing
 * destination (/dev/full), and tightening an existing cache's modes.
 */
import { spawn } from 'node:child_process'
import { chmod, lstat, mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { openSync, closeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { mergeMountOptions, parseMountOptions } from '../../src/cli/mount-options.js'
import { formatSizeArg, parseSize } from '../../src/util/progress.js'
import { DEFAULTS } from '../../src/util/defaults.js'
import { translateHelperArgs } from '../../src/cli/mount-helper.js'
import { daemonLogTarget, logFileName } from '../../src/cli/log-location.js'
import { entryPath, findDaemon, isSameProcess, listDaemons, processStartTime, registerDaemon, runtimeDir, waitForExit } from '../../src/daemon/runtime-registry.js'
import { tightenCacheDir } from '../../src/util/cache-permissions.js'
import { SafeLogDestination } from '../../src/util/log-destination.js'

const dirs: string[] = []
async function temp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'cnaifs-ops-'))
  dirs.push(d)
  return d
}
afterAll(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }) })

describe('size defaults in --help', () => {
  it('are written from DEFAULTS and read back to the same bytes', () => {
    expect(formatSizeArg(DEFAULTS.read.memoryBudgetBytes)).toBe('256M')
    expect(formatSizeArg(DEFAULTS.fuse.readaheadBytes)).toBe('512K')
    for (const n of [1, 1000, 4096, 1536 * 1024, 3 * 1024 ** 3, 5 * 1024 ** 4]) expect(parseSize(formatSizeArg(n))).toBe(n)
  })
})

describe('-o mount options', () => {
  it('give the values the flags give, in either spelling, and ignore mount(8)\'s own', () => {
    expect(parseMountOptions(['allow_other,cache-max-size=50G,read_timeout=5', 'prefetch=meta,defaults,noauto,_netdev,x-systemd.automount,ro,cache_dir=/var/cache/m,debug'])).toEqual({
      command: { allowOther: true, cacheMaxSize: '50G', readTimeout: '5', prefetch: 'meta' },
      global: { cacheDir: '/var/cache/m', logLevel: 'debug' },
      ignored: ['defaults', 'noauto', '_netdev', 'x-systemd.automount', 'ro'],
    })
    expect(parseMountOptions(['ca_file="/etc/a,b.pem",uid=0']).command).toEqual({ caFile: '/etc/a,b.pem', uid: '0' })
  })

  it('cover the registry and kernel options too; a header may be given several times, and adds to -H', () => {
    const parsed = parseMountOptions(['header=X-A:1,header="X-B: 2",authfile=/etc/cnaifs/auth.json,registry_config=crio,kernel_readahead=128K'])
    expect(parsed.command).toEqual({ header: ['X-A:1', 'X-B: 2'], authfile: '/etc/cnaifs/auth.json', registryConfig: 'crio', kernelReadahead: '128K' })
    expect(mergeMountOptions({ header: ['X-C:3'] }, parsed.command, () => false)).toMatchObject({ header: ['X-C:3', 'X-A:1', 'X-B: 2'] })
  })

  it('refuse unknown options (unless sloppy), missing values and values on switches', () => {
    expect(() => parseMountOptions(['allow_other,max_read=4096'])).toThrow(/^unknown mount option "max_read" \(known: allow_other, uid,/)
    expect(parseMountOptions(['max_read=4096'], { sloppy: true }).ignored).toEqual(['max_read=4096'])
    expect(() => parseMountOptions(['uid'])).toThrow('mount option uid needs a value (uid=…, as --uid takes one)')
    expect(() => parseMountOptions(['allow_other=1'])).toThrow('mount option allow_other takes no value (it is the switch --allow-other)')
    expect(() => parseMountOptions(['uid=1,uid=2'])).toThrow('mount option uid is given twice with different values')
    expect(() => parseMountOptions(['ca_file="/a'])).toThrow('-o ca_file="/a: unbalanced double quote')
  })

  it('merge with flags: a default gives way, an explicit flag must agree', () => {
    const flags = { readTimeout: '30', uid: '7' }
    expect(mergeMountOptions(flags, { readTimeout: '5' }, () => false)).toEqual({ readTimeout: '5', uid: '7' })
    expect(mergeMountOptions(flags, { uid: '7' }, (a) => a === 'uid')).toEqual(flags)
    expect(() => mergeMountOptions(flags, { uid: '8' }, (a) => a === 'uid')).toThrow('--uid and -o disagree ("7" and "8")')
  })

  it('the mount(8) helper turns its arguments into `cnaifs mount`', () => {
    expect(translateHelperArgs(['reg:5000/m:v1', '/mnt/m', '-o', 'rw,allow_other', '-n', '-t', 'fuse.cnaifs'])).toEqual({ argv: ['mount', 'reg:5000/m:v1', '/mnt/m', '-o', 'rw,allow_other'], fake: false })
    expect(translateHelperArgs(['r/m:v1', '/mnt/m', '-sv', '-o', 'max_read=1,uid=3'])).toEqual({ argv: ['mount', 'r/m:v1', '/mnt/m', '-o', 'uid=3', '--log-level', 'info'], fake: false })
    expect(translateHelperArgs(['r/m:v1', '/mnt/m', '-f']).fake).toBe(true)
    expect(() => translateHelperArgs(['r/m:v1'])).toThrow('usage: mount.fuse.cnaifs REFERENCE MOUNTPOINT [-sfnv] [-o OPTIONS]')
    expect(() => translateHelperArgs(['r/m:v1', '/mnt/m', '-w'])).toThrow('cnaifs mounts are read-only: mount -w is not possible')
    expect(() => translateHelperArgs(['r/m:v1', '/mnt/m', '-N', '/proc/1/ns/mnt'])).toThrow('mount -N (another mount namespace) is not supported by cnaifs')
  })
})

describe('the runtime registry', () => {
  it('is /run/cnaifs for root, $XDG_RUNTIME_DIR/cnaifs for others, $CNAIFS_RUNTIME_DIR when set', () => {
    expect(runtimeDir({}, 0)).toBe('/run/cnaifs')
    expect(runtimeDir({ XDG_RUNTIME_DIR: '/run/user/1000' }, 1000)).toBe('/run/user/1000/cnaifs')
    expect(runtimeDir({}, 1000)).toBe(join(tmpdir(), 'cnaifs-1000'))
    expect(runtimeDir({ CNAIFS_RUNTIME_DIR: '/x' }, 0)).toBe('/x')
  })

  it('finds a registered daemon by mount point; the entry goes when it is removed', async () => {
    const dir = await temp()
    const mp = join(dir, 'mnt')
    const reg = await registerDaemon({ mountpoint: mp, controlSocket: '/s.sock', cacheDir: '/c', reference: 'r/m:v1', digest: 'sha256:x', log: '/l.log' }, dir)
    expect(reg.path).toBe(entryPath(dir, mp))
    expect((await stat(reg.path)).mode & 0o777).toBe(0o600)
    expect((await stat(join(dir, 'mounts'))).mode & 0o777).toBe(0o700)
    expect(await findDaemon(mp + '/', [dir])).toMatchObject({ mountpoint: mp, pid: process.pid, pidStartTime: processStartTime(process.pid), controlSocket: '/s.sock', cacheDir: '/c' })
    expect((await listDaemons([dir])).map((e) => e.mountpoint)).toEqual([mp])
    await reg.remove()
    expect(await findDaemon(mp, [dir])).toBeUndefined()
    expect(await readdir(join(dir, 'mounts'))).toEqual([])
  })

  it('ignores and removes entries of exited processes, reused pids and damaged files', async () => {
    const dir = await temp()
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' })
    await new Promise((r) => child.once('spawn', r))
    const pid = child.pid!
    const start = processStartTime(pid)!
    expect(isSameProcess(pid, start)).toBe(true)
    await mkdir(join(dir, 'mounts'), { recursive: true })
    const entry = (mountpoint: string, pidStartTime: number) => JSON.stringify({ version: 1, mountpoint, pid, pidStartTime, controlSocket: '/s', cacheDir: '/c', reference: 'r', digest: 'd', log: 'stderr', startedAt: 'now' })
    await writeFile(entryPath(dir, '/mnt/live'), entry('/mnt/live', start))
    await writeFile(entryPath(dir, '/mnt/reused'), entry('/mnt/reused', start + 1))
    await writeFile(entryPath(dir, '/mnt/damaged'), '{"version":1,')
    expect((await findDaemon('/mnt/live', [dir]))?.pid).toBe(pid)
    expect(await findDaemon('/mnt/reused', [dir])).toBeUndefined()
    expect(await findDaemon('/mnt/damaged', [dir])).toBeUndefined()
    expect(await readdir(join(dir, 'mounts'))).toEqual([entryPath(dir, '/mnt/live').split('/').pop()])

    expect(await waitForExit(pid, start, 200)).toBe(false)
    child.kill('SIGKILL')
    expect(await waitForExit(pid, start, 10_000)).toBe(true)
    expect(await findDaemon('/mnt/live', [dir])).toBeUndefined()
    expect(await readdir(join(dir, 'mounts'))).toEqual([])
  })

  it('refuses a runtime directory that is another user\'s', async () => {
    const dir = await temp()
    await chmod(dir, 0o755)
    const theirs = join(dir, 'theirs')
    await mkdir(theirs)
    await (await import('node:fs/promises')).chown(theirs, 65534, 65534)
    await expect(registerDaemon({ mountpoint: '/mnt/x', controlSocket: '/s', cacheDir: '/c', reference: 'r', digest: 'd', log: 'stderr' }, theirs))
      .rejects.toThrow(`${theirs} is not a directory owned by this user: refusing to register the mount there (set CNAIFS_RUNTIME_DIR)`)
  })
})

describe('logging', () => {
  it('a destination that fails (/dev/full) drops and counts lines, and never throws', () => {
    const fd = openSync('/dev/full', 'w')
    try {
      const dest = new SafeLogDestination(fd)
      const log = pino({ level: 'info' }, dest)
      for (let i = 0; i < 5; i++) log.info({ i }, 'a line that cannot be written')
      expect(dest.stats()).toMatchObject({ droppedLines: 5, lastError: 'ENOSPC' })
    } finally {
      closeSync(fd)
    }
  })

  it('reports what was dropped once, in the first line that can be written again', async () => {
    const path = join(await temp(), 'log')
    const fd = openSync(path, 'a')
    const broken = openSync('/dev/full', 'w')
    const dest = new SafeLogDestination(broken)
    // The same destination object, first on a full device, then on a file with room (as when a disk frees up).
    dest.write('{"msg":"lost 1"}\n')
    dest.write('{"msg":"lost 2"}\n')
    ;(dest as unknown as { fd: number }).fd = fd
    dest.write('{"msg":"kept 1"}\n')
    dest.write('{"msg":"kept 2"}\n')
    closeSync(fd)
    closeSync(broken)
    const lines = (await import('node:fs')).readFileSync(path, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { msg: string; droppedLines?: number; error?: string })
    expect(lines.map((l) => l.msg)).toEqual(['2 log lines were dropped: the log could not be written (ENOSPC)', 'kept 1', 'kept 2'])
    expect(lines[0]).toMatchObject({ droppedLines: 2, error: 'ENOSPC' })
  })

  it('a background daemon logs outside the cache: /var/log/cnaifs for root, XDG_STATE_HOME otherwise', async () => {
    const base = await temp()
    expect(logFileName('/mnt/models/llama 3/')).toBe('mount-mnt_models_llama_3.log')
    expect(daemonLogTarget({ mountpoint: '/mnt/a', cacheDir: '/c', logFile: '/x.log' }, {})).toEqual({ kind: 'file', path: '/x.log' })
    expect(daemonLogTarget({ mountpoint: '/mnt/a', cacheDir: '/c' }, { CNAIFS_LOG_DIR: join(base, 'logs') })).toEqual({ kind: 'file', path: join(base, 'logs', 'mount-mnt_a.log') })
    expect((await stat(join(base, 'logs'))).mode & 0o777).toBe(0o700)
    if (process.getuid?.() === 0) expect(daemonLogTarget({ mountpoint: '/mnt/a', cacheDir: '/c' }, {})).toEqual({ kind: 'file', path: '/var/log/cnaifs/mount-mnt_a.log' })
    // stderr is not the journal unless JOURNAL_STREAM names it
    expect(daemonLogTarget({ mountpoint: '/mnt/a', cacheDir: join(base, 'c') }, { CNAIFS_LOG_DIR: join(base, 'l'), JOURNAL_STREAM: '1:2' }).kind).toBe('file')
  })
})

describe('tightenCacheDir', () => {
  it('makes an old cache private: directories 0700, files 0600, symlinks not followed', async () => {
    const cache = join(await temp(), 'cache')
    const outside = join(await temp(), 'outside')
    await writeFile(outside, 'x')
    await chmod(outside, 0o644)
    for (const d of ['index/refs', 'blocks/ab/' + 'ab'.repeat(32), 'compressed', 'logs', 'run']) await mkdir(join(cache, d), { recursive: true, mode: 0o755 })
    const files = ['index/x.json', 'index/refs/r.json', 'blocks/ab/' + 'ab'.repeat(32) + '/0', 'compressed/c.bin', 'logs/mount-a.log']
    for (const f of files) { await writeFile(join(cache, f), 'data'); await chmod(join(cache, f), 0o644) }
    await symlink(outside, join(cache, 'index', 'link'))
    await chmod(cache, 0o755)

    const r = await tightenCacheDir(cache)
    expect(r).toEqual({ changed: 1 + 8 + files.length, failed: 0 }) // the root, 8 directories, the files
    expect((await stat(cache)).mode & 0o777).toBe(0o700)
    for (const d of ['index', 'index/refs', 'blocks/ab', 'compressed', 'logs', 'run']) expect((await stat(join(cache, d))).mode & 0o777, d).toBe(0o700)
    for (const f of files) expect((await stat(join(cache, f))).mode & 0o777, f).toBe(0o600)
    expect((await stat(outside)).mode & 0o777).toBe(0o644)
    expect((await lstat(join(cache, 'index', 'link'))).isSymbolicLink()).toBe(true)
    expect(await tightenCacheDir(cache)).toEqual({ changed: 0, failed: 0 })
  })

  it('leaves a shared directory\'s own mode alone, but tightens what is cnaifs\'', async () => {
    const shared = await temp()
    await chmod(shared, 0o755)
    await mkdir(join(shared, 'index'), { mode: 0o755 })
    await writeFile(join(shared, 'someone-elses.txt'), '')
    const warnings: string[] = []
    const r = await tightenCacheDir(shared, { warn: (_o, msg) => warnings.push(msg) })
    expect(r).toEqual({ changed: 1, failed: 0, rootLeftAlone: `${shared} also holds someone-elses.txt` })
    expect((await stat(shared)).mode & 0o777).toBe(0o755)
    expect((await stat(join(shared, 'index'))).mode & 0o777).toBe(0o700)
    expect(warnings).toEqual([`cache directory left readable by others: ${shared} also holds someone-elses.txt`])
  })
})
