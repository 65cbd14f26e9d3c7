/**
 * Where a background mount daemon logs. Not in the cache directory when another place exists: a cache on a
 * full disk must not also silence (or, before SafeLogDestination, kill) the daemon through its log.
 *
 *   --log-file PATH                          as given
 *   stderr is the systemd journal            the journal (a .mount unit, or `cnaifs mount` in a service)
 *   $CNAIFS_LOG_DIR                          <dir>/mount-<mount point>.log
 *   root                                     /var/log/cnaifs/mount-<mount point>.log
 *   others                                   $XDG_STATE_HOME/cnaifs/logs/… (~/.local/state/cnaifs/logs/…)
 *   none of those can be created             <cache-dir>/logs/…
 */
import { chmodSync, fstatSync, mkdirSync, openSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from '../util/atomic-write.js'

export type LogTarget = { kind: 'file'; path: string } | { kind: 'journal' }

/**
 * True when our stderr is the journal: systemd sets JOURNAL_STREAM to "<dev>:<inode>" of the stream it
 * connected, and a process whose stderr still is that stream may log to it (sd_journal_stream_fd(3)).
 */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env, fd = 2): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '')
  if (!m) return false
  try {
    const st = fstatSync(fd, { bigint: true })
    return st.dev === BigInt(m[1]!) && st.ino === BigInt(m[2]!)
  } catch {
    return false
  }
}

/** A file name for one mount point's log: /mnt/models/llama → mount-mnt_models_llama.log. */
export function logFileName(mountpoint: string): string {
  return `mount-${mountpoint.replace(/[^a-zA-Z0-9]+/g, '_').replace(/^_|_$/g, '') || 'root'}.log`
}

/** The log directories to try, best first. */
export function logDirCandidates(cacheDir: string, env: NodeJS.ProcessEnv = process.env, uid: number | undefined = process.getuid?.()): string[] {
  const dirs: string[] = []
  if (env.CNAIFS_LOG_DIR) dirs.push(env.CNAIFS_LOG_DIR)
  else if (uid === 0) dirs.push('/var/log/cnaifs')
  else dirs.push(join(env.XDG_STATE_HOME || join(env.HOME || homedir(), '.local', 'state'), 'cnaifs', 'logs'))
  dirs.push(join(cacheDir, 'logs'))
  return dirs
}

export function daemonLogTarget(o: { mountpoint: string; cacheDir: string; logFile?: string }, env: NodeJS.ProcessEnv = process.env): LogTarget {
  if (o.logFile) return { kind: 'file', path: o.logFile }
  if (stderrIsJournal(env)) return { kind: 'journal' }
  const name = logFileName(o.mountpoint)
  const dirs = logDirCandidates(o.cacheDir, env)
  for (const dir of dirs) {
    try {
      mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE })
      return { kind: 'file', path: join(dir, name) }
    } catch {
      // read-only /var/log, no home: try the next place
    }
  }
  return { kind: 'file', path: join(dirs[dirs.length - 1]!, name) }
}

/** Opens a daemon log for appending, readable only by its owner (an older 0644 log is tightened). */
export function openDaemonLog(path: string): number {
  mkdirSync(join(path, '..'), { recursive: true, mode: PRIVATE_DIR_MODE })
  const fd = openSync(path, 'a', PRIVATE_FILE_MODE)
  try {
    chmodSync(path, PRIVATE_FILE_MODE)
  } catch {
    // a log we may append to but not chmod (someone else's file given with --log-file): keep its mode
  }
  return fd
}

/** How a log target is shown to people (the `mount` line, status, the runtime registry). */
export function describeLogTarget(t: LogTarget): string {
  return t.kind === 'file' ? t.path : 'journal'
}
