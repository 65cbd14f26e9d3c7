/**
 * The runtime registry: which daemon serves which mount point, so `cnaifs status|unmount|prefetch MP` find
 * a mount's daemon from the mount point alone, whatever --cache-dir it was started with.
 *
 *   <runtime dir>/mounts/<32 hex of sha256(mount point)>.json    one RuntimeEntry per live mount
 *
 * The runtime dir is /run/cnaifs for root and $XDG_RUNTIME_DIR/cnaifs otherwise (both on tmpfs, emptied at
 * boot, so no entry outlives the machine's uptime), or $CNAIFS_RUNTIME_DIR. A daemon writes its entry once
 * it is mounted and serving its control socket, and removes it when it exits. A daemon killed with SIGKILL
 * leaves its entry behind: every lookup checks that the pid still runs and is the same process (its start
 * time in /proc), and removes entries that fail the check.
 */
import { createHash } from 'node:crypto'
import { chmod, lstat, readdir, readFile, stat, unlink } from 'node:fs/promises'
import { readFileSync, unlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { PRIVATE_DIR_MODE, mkdirPrivate, writeFileAtomic } from '../util/atomic-write.js'
import { CnaifsError } from '../util/errors.js'
import { count, matching, object, literal, string, type Check } from '../util/validate.js'
import { readStored } from '../util/stored.js'

export const RUNTIME_ENTRY_VERSION = 1

export interface RuntimeEntry {
  version: typeof RUNTIME_ENTRY_VERSION
  /** Absolute mount point, as the daemon mounted it. */
  mountpoint: string
  pid: number
  /** Start time of `pid` (field 22 of /proc/<pid>/stat, clock ticks after boot): a reused pid has another. */
  pidStartTime: number
  /** The daemon's control socket (HTTP over a unix socket: /status, /prefetch). */
  controlSocket: string
  cacheDir: string
  reference: string
  digest: string
  /** Where the daemon logs: a file, or "stderr" (a terminal, the journal). */
  log: string
  startedAt: string
}

const entryShape: Check<RuntimeEntry> = object({
  version: literal(RUNTIME_ENTRY_VERSION), mountpoint: matching(/^\//, 'an absolute path'), pid: count, pidStartTime: count,
  controlSocket: string, cacheDir: string, reference: string, digest: string, log: string, startedAt: string,
})

/** Where this user's daemons register. */
export function runtimeDir(env: NodeJS.ProcessEnv = process.env, uid: number | undefined = process.getuid?.()): string {
  if (env.CNAIFS_RUNTIME_DIR) return env.CNAIFS_RUNTIME_DIR
  if (uid === 0) return '/run/cnaifs'
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'cnaifs')
  // No runtime dir (a cron job, `su` without a login session): a private directory of our own in /tmp.
  return join(tmpdir(), `cnaifs-${uid ?? 'user'}`)
}

/**
 * The directories a lookup searches: this user's, and for root also every user's under /run/user, so root can
 * stop or inspect a mount an unprivileged user made (root may signal any process).
 */
export async function lookupDirs(env: NodeJS.ProcessEnv = process.env, uid: number | undefined = process.getuid?.()): Promise<string[]> {
  const own = runtimeDir(env, uid)
  if (uid !== 0 || env.CNAIFS_RUNTIME_DIR) return [own]
  const users = await readdir('/run/user').catch(() => [] as string[])
  return [own, ...users.filter((u) => /^\d+$/.test(u)).map((u) => join('/run/user', u, 'cnaifs'))]
}

export function entryPath(dir: string, mountpoint: string): string {
  const id = createHash('sha256').update(resolve(mountpoint)).digest('hex').slice(0, 32)
  return join(dir, 'mounts', `${id}.json`)
}

/** Field 22 of /proc/<pid>/stat (the process' start time), or undefined when there is no such process. */
export function processStartTime(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name (field 2) is in parentheses and may hold spaces or ')': fields after it follow the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const start = Number(fields[22 - 3])
    return Number.isSafeInteger(start) ? start : undefined
  } catch {
    return undefined
  }
}

/**
 * True while `pid` runs. A zombie has exited: it has no mount to serve and only waits for its parent to reap it
 * (a detached daemon's parent is init, which may take a second or more).
 */
export function processRunning(pid: number): boolean {
  try {
    const state = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return state.slice(state.lastIndexOf(')') + 2, state.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

/** True while `pid` runs and is the process that started at `startTime` (not a later one with its pid). */
export function isSameProcess(pid: number, startTime: number): boolean {
  const now = processStartTime(pid)
  return now !== undefined && now === startTime && processRunning(pid)
}

export interface Registration {
  readonly path: string
  /** Removes the entry if it is still this process' (a later daemon on the same mount point may own it now). */
  remove(): Promise<void>
}

/** Registers the calling process as the daemon of `mountpoint`; the entry is removed at exit, too. */
export async function registerDaemon(fields: Omit<RuntimeEntry, 'version' | 'pid' | 'pidStartTime' | 'startedAt'>, dir: string = runtimeDir()): Promise<Registration> {
  const entry: RuntimeEntry = {
    version: RUNTIME_ENTRY_VERSION,
    ...fields,
    mountpoint: resolve(fields.mountpoint),
    pid: process.pid,
    pidStartTime: processStartTime(process.pid) ?? 0,
    startedAt: new Date().toISOString(),
  }
  const path = entryPath(dir, entry.mountpoint)
  await ensureOwnDir(dir)
  await ensureOwnDir(join(dir, 'mounts'))
  await writeFileAtomic(path, JSON.stringify(entry) + '\n')
  const ours = (text: string) => {
    try {
      return (JSON.parse(text) as RuntimeEntry).pid === process.pid
    } catch {
      return false
    }
  }
  // process.exit() runs no finally blocks: drop the entry synchronously then, too.
  const onExit = () => {
    try {
      if (ours(readFileSync(path, 'utf8'))) unlinkSync(path)
    } catch {
      // already gone
    }
  }
  process.once('exit', onExit)
  return {
    path,
    async remove() {
      process.off('exit', onExit)
      const text = await readFile(path, 'utf8').catch(() => '')
      if (ours(text)) await unlink(path).catch(() => undefined)
    },
  }
}

/** Creates `dir` 0700, and refuses one that is a symlink or another user's (a pre-created /tmp dir). */
async function ensureOwnDir(dir: string): Promise<void> {
  await mkdirPrivate(dir)
  const st = await lstat(dir)
  if (!st.isDirectory() || st.uid !== process.getuid?.()) {
    throw new CnaifsError('EUSAGE', `${dir} is not a directory owned by this user: refusing to register the mount there (set CNAIFS_RUNTIME_DIR)`)
  }
  if (st.mode & 0o077) await chmod(dir, PRIVATE_DIR_MODE)
}

/**
 * An entry is believed only when its file and its pid have the same owner: a user can write entries only as
 * themselves, so an entry can never make root signal another user's process.
 */
async function trusted(path: string, e: RuntimeEntry): Promise<boolean> {
  if (!isSameProcess(e.pid, e.pidStartTime)) return false
  try {
    const [file, proc] = await Promise.all([stat(path), stat(`/proc/${e.pid}`)])
    return file.uid === proc.uid
  } catch {
    return false
  }
}

/**
 * The live daemon registered for `mountpoint`, searching `dirs` in order. Entries of processes that are gone
 * (or whose pid now belongs to another process) are removed on the way, as are unreadable ones.
 */
export async function findDaemon(mountpoint: string, dirs?: string[]): Promise<RuntimeEntry | undefined> {
  const abs = resolve(mountpoint)
  for (const dir of dirs ?? (await lookupDirs())) {
    const path = entryPath(dir, abs)
    const s = await readStored(path, (text) => entryShape(JSON.parse(text), ''))
    if (s.state === 'absent') continue
    if (s.state === 'ok' && s.value.mountpoint === abs && (await trusted(path, s.value))) return s.value
    await unlink(path).catch(() => undefined) // dead, reused pid or damaged: nobody can use it
  }
  return undefined
}

/** Every live daemon registered in `dirs` (stale entries are removed). */
export async function listDaemons(dirs?: string[]): Promise<RuntimeEntry[]> {
  const out: RuntimeEntry[] = []
  for (const dir of dirs ?? (await lookupDirs())) {
    for (const name of await readdir(join(dir, 'mounts')).catch(() => [] as string[])) {
      if (!/^[0-9a-f]{32}\.json$/.test(name)) continue
      const path = join(dir, 'mounts', name)
      const s = await readStored(path, (text) => entryShape(JSON.parse(text), ''))
      if (s.state === 'ok' && (await trusted(path, s.value))) out.push(s.value)
      else if (s.state !== 'absent') await unlink(path).catch(() => undefined)
    }
  }
  return out
}

/** Waits until `pid` (started at `startTime`) has exited; false if it still runs after `timeoutMs`. */
export async function waitForExit(pid: number, startTime: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (!isSameProcess(pid, startTime)) return true
    if (Date.now() >= deadline) return false
    await new Promise((r) => setTimeout(r, 50))
  }
}
