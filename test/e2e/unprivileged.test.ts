/**
 * A developer exploring a model on their own machine: cnaifs as an unprivileged user, mounting through the
 * setuid fusermount with the cache under $XDG_CACHE_HOME, and a clear message when /dev/fuse is not theirs.
 * The test runs the CLI as `nobody` (runuser), from a copy of the built project that user can read.
 */
import { execFile } from 'node:child_process'
import { chmod, cp, mkdir, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, expect, inject, it } from 'vitest'
import type {} from '../helpers/global-setup.js'
import { REPO_ROOT, cleanupTempDirs, describeResult, makeModelDir, runCli, tempDir, uniqueRepo } from '../helpers/cli.js'
import { withDevFuseLock } from '../helpers/dev-fuse-lock.js'

const execFileAsync = promisify(execFile)
const registry = inject('registry')

let project: string
let home: string
let fuseMode: number

/** Runs the copied CLI as nobody; resolves with exit code and output (never rejects on a non-zero exit). */
async function asNobody(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync('runuser', ['-u', 'nobody', '--', 'env', `HOME=${home}`, `XDG_CACHE_HOME=${join(home, '.cache')}`,
      process.execPath, join(project, 'bin', 'cnaifs'), ...args], { timeout: 60_000 })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string }
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }
  }
}

beforeAll(async () => {
  fuseMode = (await stat('/dev/fuse')).mode & 0o777
  const base = await tempDir('cnaifs-unpriv-')
  await chmod(base, 0o755)
  project = join(base, 'project')
  for (const part of ['bin', 'dist', 'package.json', 'node_modules', 'native']) await cp(join(REPO_ROOT, part), join(project, part), { recursive: true })
  home = join(base, 'home')
  await mkdir(home)
  await execFileAsync('chown', ['-R', 'nobody', home])
})

afterAll(async () => {
  await chmod('/dev/fuse', fuseMode)
  await cleanupTempDirs()
})

it('mounts as an unprivileged user with the cache under XDG_CACHE_HOME, and explains a /dev/fuse it cannot open', async () => {
  const model = await makeModelDir({ 'config.json': '{"a":1}\n', 'weights.bin': 2 * 1024 * 1024 + 1 })
  const ref = `${registry.host}/${uniqueRepo('unpriv')}:v1`
  const push = await runCli(['push', '--no-progress', model.dir, ref])
  expect(push.code, describeResult(push)).toBe(0)
  const mp = join(home, 'mnt')

  // Other test files change /dev/fuse's mode too: hold the lock while this one depends on it.
  await withDevFuseLock(async () => {
    await chmod('/dev/fuse', 0o600)
    const denied = await asNobody(['mount', ref, mp])
    expect(denied.code).toBe(1)
    expect(denied.stderr.trim()).toBe('cnaifs: FUSE is not available to this user: /dev/fuse is not readable and writable (add the user to the fuse group, or run as root)')

    await chmod('/dev/fuse', 0o666)
    const mounted = await asNobody(['mount', ref, mp])
    expect(mounted.code, mounted.stderr).toBe(0)
    try {
      const { stdout } = await execFileAsync('runuser', ['-u', 'nobody', '--', 'sha256sum', join(mp, 'weights.bin')])
      expect(stdout.split(' ')[0]).toBe(model.files['weights.bin'].sha256)
      // Without --allow-other a user's FUSE mount is private to that user: even root is refused.
      await expect(readFile(join(mp, 'config.json'))).rejects.toMatchObject({ code: 'EACCES' })
      expect((await stat(join(home, '.cache', 'cnaifs', 'index'))).isDirectory()).toBe(true)
      expect((await stat(join(home, '.cache', 'cnaifs', 'blobs'))).uid).toBe(65534)
    } finally {
      const un = await asNobody(['unmount', mp])
      expect(un.code, un.stderr).toBe(0)
    }
  })
})
