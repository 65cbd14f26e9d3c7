/**
 * Tests that change /dev/fuse's mode (to let `nobody` mount, or to check the message when it cannot) run in
 * different files, which vitest runs in parallel: they take this lock so one never mounts inside another's
 * window. A directory is the lock (mkdir is atomic); it names its holder's pid so a crashed run's lock is taken
 * over.
 */
import { promises as fsp } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'

const LOCK = join(tmpdir(), 'cnaifs-test-dev-fuse.lock')

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

async function acquire(): Promise<void> {
  for (;;) {
    try {
      await fsp.mkdir(LOCK)
      await fsp.writeFile(join(LOCK, 'pid'), String(process.pid))
      return
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    const holder = Number(await fsp.readFile(join(LOCK, 'pid'), 'utf8').catch(() => ''))
    if (holder && !alive(holder)) {
      await fsp.rm(LOCK, { recursive: true, force: true })
      continue
    }
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** Runs `fn` holding the /dev/fuse lock, and restores /dev/fuse's mode afterwards. */
export async function withDevFuseLock<T>(fn: () => Promise<T>): Promise<T> {
  await acquire()
  const mode = (await fsp.stat('/dev/fuse')).mode & 0o777
  try {
    return await fn()
  } finally {
    await fsp.chmod('/dev/fuse', mode).catch(() => {})
    await fsp.rm(LOCK, { recursive: true, force: true })
  }
}
