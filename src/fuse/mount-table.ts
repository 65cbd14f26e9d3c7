/**
 * The mount table and the kernel knobs of a FUSE mount, shared by both bindings: which mount sits at a path
 * (and whether it is ours, by device number), clearing a mount whose daemon died, lazy unmount, and the
 * post-mount tuning through sysfs. Nothing here sends a request to a FUSE filesystem except statfs in
 * clearStaleMount, which is asked only of a mount that may be dead, and always asynchronously.
 */
import { execFile } from 'node:child_process'
import { promises as fsp } from 'node:fs'
import { basename, dirname, join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { CnaifsError, errorMessage } from '../util/errors.js'

const execFileAsync = promisify(execFile)

const FUSECTL_DIR = '/sys/fs/fuse/connections'

export interface MountInfo {
  mountId: number
  major: number
  minor: number
  mountPoint: string
  /** Per-mount options (ro, nosuid, nodev, relatime …). */
  options: string[]
  fsType: string
  source: string
  /** Per-superblock options (user_id, group_id, default_permissions, allow_other …). */
  superOptions: string[]
}

/** A mount's device number, which names its connection in fusectl and its bdi in sysfs. */
export interface MountDevice {
  major: number
  minor: number
}

/** /proc/self/mountinfo escapes space, tab, newline and backslash as octal (\040 …). */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)))
}

export function parseMountinfo(text: string): MountInfo[] {
  const mounts: MountInfo[] = []
  for (const line of text.split('\n')) {
    if (!line) continue
    // id parent major:minor root mountpoint options [optional fields…] - fstype source superoptions
    const fields = line.split(' ')
    const sep = fields.indexOf('-', 6)
    if (sep < 0 || fields.length < sep + 3) continue
    const [major, minor] = fields[2].split(':').map(Number)
    mounts.push({
      mountId: Number(fields[0]),
      major,
      minor,
      mountPoint: unescapeMountField(fields[4]),
      options: fields[5].split(','),
      fsType: fields[sep + 1],
      source: unescapeMountField(fields[sep + 2]),
      superOptions: (fields[sep + 3] ?? '').split(','),
    })
  }
  return mounts
}

export async function readMountinfo(): Promise<MountInfo[]> {
  return parseMountinfo(await fsp.readFile('/proc/self/mountinfo', 'utf8'))
}

/**
 * The path as the mount table spells it. Only the parent is resolved: the mountpoint itself may be a dead
 * FUSE mount, where realpath fails with ENOTCONN.
 */
export async function canonicalMountpoint(mountpoint: string): Promise<string> {
  const abs = resolve(mountpoint)
  if (abs === '/') return abs
  try {
    return join(await fsp.realpath(dirname(abs)), basename(abs))
  } catch {
    return abs
  }
}

/** The topmost mount at `mountpoint` (later lines of mountinfo are mounted over earlier ones). */
export async function findMount(mountpoint: string): Promise<MountInfo | undefined> {
  const mp = await canonicalMountpoint(mountpoint)
  let found: MountInfo | undefined
  for (const m of await readMountinfo()) if (m.mountPoint === mp) found = m
  return found
}

export async function isMounted(mountpoint: string): Promise<boolean> {
  return (await findMount(mountpoint)) !== undefined
}

/** True while the topmost mount at `mountpoint` is the one with device `dev` (so it is still ours). */
export async function isOurMount(mountpoint: string, dev: MountDevice): Promise<boolean> {
  const m = await findMount(mountpoint)
  return m !== undefined && m.major === dev.major && m.minor === dev.minor
}

/**
 * Unmounts a session's mount the way both bindings do: detach it lazily (never EBUSY) while it is still ours,
 * end the session (`end()`; whatever still waits is answered EIO) and wait for it to be over. A failed detach
 * is reported only if the mount is still there afterwards (ending the session may have removed it).
 */
export async function detachThenEnd(mountpoint: string, dev: MountDevice | undefined, end: () => void, ended: Promise<void>): Promise<void> {
  let detachError: unknown
  try {
    if (dev && await isOurMount(mountpoint, dev)) await lazyUnmount(mountpoint)
  } catch (err) {
    detachError = err
  }
  end()
  await ended
  if (detachError !== undefined && dev && await isOurMount(mountpoint, dev)) {
    throw new CnaifsError('EMOUNT', `cannot unmount ${mountpoint}: ${errorMessage(detachError)}`, { cause: detachError })
  }
}

/** True while a mount with device `dev` is anywhere in this mount namespace. */
export async function deviceMounted(dev: MountDevice): Promise<boolean> {
  return (await readMountinfo()).some((m) => m.major === dev.major && m.minor === dev.minor)
}

/**
 * `fusermount3 -uz` (or libfuse 2's `fusermount -uz`), or `umount -l` when both are missing or refuse and we
 * are root. Arguments go to execFile, never through a shell.
 */
export async function lazyUnmount(mountpoint: string): Promise<void> {
  let firstError: unknown
  for (const tool of ['fusermount3', 'fusermount']) {
    try {
      await execFileAsync(tool, ['-uz', '--', mountpoint])
      return
    } catch (err) {
      firstError ??= err
      // A missing tool: try the next; a refusal from one fusermount is the answer of both.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') break
    }
  }
  if (process.getuid?.() !== 0) throw firstError
  await execFileAsync('umount', ['-l', mountpoint])
}

/**
 * Clears a FUSE mount whose daemon died ("Transport endpoint is not connected"). Only statfs is asked: the
 * kernel always forwards it to the daemon, whereas stat/lookup may be answered from caches of a dead mount.
 * Returns true if it unmounted something. A live mount (even a slow one) is left alone.
 */
export async function clearStaleMount(mountpoint: string): Promise<boolean> {
  const mp = await canonicalMountpoint(mountpoint)
  const mount = await findMount(mp)
  if (!mount || !mount.fsType.startsWith('fuse')) return false
  try {
    await fsp.statfs(mp)
    return false
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    // ECONNABORTED: the connection was aborted through fusectl rather than by the daemon exiting.
    if (code !== 'ENOTCONN' && code !== 'ECONNABORTED') return false
  }
  try {
    await lazyUnmount(mp)
  } catch (err) {
    throw new CnaifsError('EMOUNT', `cannot clear the stale mount at ${mp}: ${errorMessage(err)}`, { cause: err })
  }
  return true
}

/** What tuneMount may set; absent fields are left as the kernel negotiated them. */
export interface MountTuning {
  readaheadBytes: number
  maxBackground?: number
  congestionThreshold?: number
}

/** What tuneMount did, for a debug log line: file → value written, or the reason it could not. */
export type TuningReport = Record<string, number | string>

/**
 * Sets the mount's readahead (the bdi's read_ahead_kb: FUSE_INIT can only lower it) and, when asked, the
 * connection's background-request limit through fusectl (libfuse 2 cannot negotiate it). Both need root;
 * this never fails, it reports.
 */
export async function tuneMount(dev: MountDevice, tuning: MountTuning): Promise<TuningReport> {
  const report: TuningReport = {}
  // The bdi of a (non-block) FUSE mount is named after the superblock's device number.
  const readaheadKb = Math.max(0, Math.round(tuning.readaheadBytes / 1024))
  await writeSysfs(`/sys/class/bdi/${dev.major}:${dev.minor}/read_ahead_kb`, readaheadKb, report)
  if (tuning.maxBackground === undefined) return report

  // fusectl names connections by the kernel's dev_t: (major << 20) | minor.
  const connection = join(FUSECTL_DIR, String(dev.major * 2 ** 20 + dev.minor))
  if (!(await exists(connection)) && process.getuid?.() === 0) {
    try {
      const mounted = (await readMountinfo()).some((m) => m.fsType === 'fusectl' && m.mountPoint === FUSECTL_DIR)
      if (!mounted) await execFileAsync('mount', ['-t', 'fusectl', 'fusectl', FUSECTL_DIR])
    } catch (err) {
      report[FUSECTL_DIR] = `cannot mount fusectl: ${errorMessage(err)}`
    }
  }
  if (await exists(connection)) {
    // max_background first: the kernel accepts any congestion_threshold, but it only makes sense below it.
    await writeSysfs(join(connection, 'max_background'), tuning.maxBackground, report)
    if (tuning.congestionThreshold !== undefined) {
      await writeSysfs(join(connection, 'congestion_threshold'), tuning.congestionThreshold, report)
    }
  } else {
    report[connection] = 'fusectl connection directory not available'
  }
  return report
}

async function writeSysfs(file: string, value: number, report: TuningReport): Promise<void> {
  try {
    await fsp.writeFile(file, `${value}\n`)
    report[file] = value
  } catch (err) {
    report[file] = `not set: ${errorMessage(err)}`
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await fsp.access(path)
    return true
  } catch {
    return false
  }
}

/**
 * Checks a mountpoint before mounting: clears a stale mount left by a dead daemon, refuses a live mount (a
 * second daemon would stack over the first), then requires an existing directory. Returns the canonical path
 * and whether a stale mount was cleared.
 */
export async function prepareMountpoint(mountpoint: string): Promise<{ mountpoint: string; clearedStale: boolean }> {
  const mp = await canonicalMountpoint(mountpoint)
  const clearedStale = await clearStaleMount(mp)
  const live = await findMount(mp)
  if (live) throw new CnaifsError('EMOUNT', `cannot mount at ${mp}: it is already a mount point (${live.fsType} ${live.source})`)
  let isDir: boolean
  try {
    isDir = (await fsp.stat(mp)).isDirectory()
  } catch (err) {
    throw new CnaifsError('EMOUNT', `cannot mount at ${mp}: ${errorMessage(err)}`, { cause: err })
  }
  if (!isDir) throw new CnaifsError('EMOUNT', `cannot mount at ${mp}: not a directory`)
  return { mountpoint: mp, clearedStale }
}

/** Escapes a value for a libfuse -o list (libfuse splits on commas and honours backslash escapes). */
export function escapeMountOption(value: string): string {
  return value.replace(/[\\,]/g, (c) => '\\' + c)
}
