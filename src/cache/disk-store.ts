/**
 * File-level operations of the block cache's disk tier. Layout under the cache dir:
 *
 *   block-size                   the block size the store was created with (text)
 *   <xx>/<64 hex>/<n>            block n of the blob sha256:<hex>, xx = first two hex chars
 *   <xx>/<64 hex>/complete       marker: every block present and the blob hashed to its digest (text: blob size)
 *   .tmp-<pid>-<rand>            a write in progress (or left by a crash), in the directory of its final name
 *   <xx>/.trash-<pid>-<rand>     a blob directory being deleted
 *
 * Every file appears by rename of a fully written, fsynced temp file from the same directory, so after a
 * crash or power loss a name is either absent or complete; several daemons may share the directory because
 * they only ever rename identical content over each other.
 */
import { randomBytes } from 'node:crypto'
import { mkdir, open, readdir, readFile, rename, rm, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from '../util/log.js'
import { errorMessage } from '../util/errors.js'

export const COMPLETE_MARKER = 'complete'
export const BLOCK_SIZE_FILE = 'block-size'
const TEMP_PREFIX = '.tmp-'
const TRASH_PREFIX = '.trash-'
const LEFTOVER_RE = /^\.(?:tmp|trash)-(\d+)-/
const BLOCK_RE = /^(?:0|[1-9]\d*)$/
const HEX_RE = /^[0-9a-f]{64}$/
/** A leftover older than this is stale even if its pid is alive: no write takes an hour, but pids get reused. */
const LEFTOVER_MAX_AGE_MS = 60 * 60 * 1000
const STAT_CONCURRENCY = 64

/** Temp and trash paths this process is using now: init must not delete them when it sees its own pid. */
const ownLeftovers = new Set<string>()

export function blobDirOf(root: string, hex: string): string {
  return join(root, hex.slice(0, 2), hex)
}

function leftoverName(prefix: string): string {
  return `${prefix}${process.pid}-${randomBytes(6).toString('hex')}`
}

/**
 * Writes `data` as `dir/name` crash-safely: a temp file in the same directory (so the rename is atomic),
 * fsynced before the rename so the new name can never point at unwritten data. The directory itself is not
 * fsynced: after power loss the rename may be lost, which leaves the name absent, never torn.
 */
export async function writeFileAtomic(dir: string, name: string, data: Buffer | string): Promise<void> {
  await mkdir(dir, { recursive: true })
  const tmp = join(dir, leftoverName(TEMP_PREFIX))
  ownLeftovers.add(tmp)
  try {
    const fh = await open(tmp, 'wx', 0o644)
    try {
      await fh.writeFile(data)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, join(dir, name))
  } catch (err) {
    await unlink(tmp).catch(() => undefined)
    throw err
  } finally {
    ownLeftovers.delete(tmp)
  }
}

/**
 * Deletes a blob directory atomically as seen by readers: it is renamed aside first, so no reader or scan
 * ever sees a half-deleted blob, then removed.
 */
export async function removeBlobDir(root: string, hex: string): Promise<void> {
  const dir = blobDirOf(root, hex)
  const trash = join(root, hex.slice(0, 2), leftoverName(TRASH_PREFIX))
  ownLeftovers.add(trash)
  try {
    await rename(dir, trash)
    await rm(trash, { recursive: true, force: true })
  } catch (err) {
    if (!isNotFound(err)) throw err
  } finally {
    ownLeftovers.delete(trash)
  }
}

/** A block file's bytes, or undefined if it is missing or not `expected` bytes long (then it is deleted). */
export async function readBlockFile(path: string, expected: number): Promise<Buffer | undefined> {
  let data: Buffer
  try {
    data = await readFile(path)
  } catch (err) {
    if (isNotFound(err)) return undefined
    throw err
  }
  if (data.length === expected) return data
  await unlink(path).catch(() => undefined)
  return undefined
}

export function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT'
}

/** What init learns about one blob directory. */
export interface ScannedBlob {
  hex: string
  /** block number → file size */
  blocks: Map<number, number>
  /** Blob size recorded by the complete marker, if there is one. */
  markerSize?: number
  mtimeMs: number
}

/**
 * Reads the store's layout: every blob directory with its block files. Leftover temp files and trash from
 * dead writers are removed; block files that cannot be a block (empty, or larger than a block) are deleted.
 */
export async function scanStore(root: string, blockSize: number, log: Logger): Promise<ScannedBlob[]> {
  const out: ScannedBlob[] = []
  for (const top of await listDir(root)) {
    const topPath = join(root, top)
    if (LEFTOVER_RE.test(top)) { await removeIfStale(topPath, top, log); continue }
    if (!/^[0-9a-f]{2}$/.test(top)) continue
    for (const name of await listDir(topPath)) {
      const path = join(topPath, name)
      if (LEFTOVER_RE.test(name)) { await removeIfStale(path, name, log); continue }
      if (!HEX_RE.test(name) || !name.startsWith(top)) continue
      const blob = await scanBlobDir(path, name, blockSize, log)
      if (blob) out.push(blob)
    }
  }
  return out
}

async function scanBlobDir(dir: string, hex: string, blockSize: number, log: Logger): Promise<ScannedBlob | undefined> {
  let mtimeMs: number
  try {
    mtimeMs = (await stat(dir)).mtimeMs
  } catch {
    return undefined // removed by another process while we scanned
  }
  const blob: ScannedBlob = { hex, blocks: new Map(), mtimeMs }
  const names = await listDir(dir)
  for (let i = 0; i < names.length; i += STAT_CONCURRENCY) {
    await Promise.all(names.slice(i, i + STAT_CONCURRENCY).map((name) => scanEntry(blob, dir, name, blockSize, log)))
  }
  return blob.blocks.size || blob.markerSize !== undefined ? blob : undefined
}

async function scanEntry(blob: ScannedBlob, dir: string, name: string, blockSize: number, log: Logger): Promise<void> {
  const path = join(dir, name)
  try {
    if (BLOCK_RE.test(name)) {
      const st = await stat(path)
      if (st.isFile() && st.size > 0 && st.size <= blockSize) blob.blocks.set(Number(name), st.size)
      else await unlink(path)
    } else if (name === COMPLETE_MARKER) {
      const size = Number((await readFile(path, 'utf8')).trim())
      if (Number.isSafeInteger(size) && size >= 0) blob.markerSize = size
    } else if (LEFTOVER_RE.test(name)) {
      await removeIfStale(path, name, log)
    }
  } catch (err) {
    if (!isNotFound(err)) log.warn({ path, error: errorMessage(err) }, 'block cache: cannot inspect file, ignoring it')
  }
}

async function removeIfStale(path: string, name: string, log: Logger): Promise<void> {
  try {
    if (!(await isStaleLeftover(path, name))) return
    await rm(path, { recursive: true, force: true })
    log.debug({ path }, 'block cache: removed leftover from an interrupted write')
  } catch (err) {
    if (!isNotFound(err)) log.warn({ path, error: errorMessage(err) }, 'block cache: cannot remove leftover file')
  }
}

/** A leftover belongs to a live writer only if its pid runs (and it is not ours from a previous life) and it is recent. */
async function isStaleLeftover(path: string, name: string): Promise<boolean> {
  const pid = Number(LEFTOVER_RE.exec(name)?.[1])
  if (pid === process.pid) return !ownLeftovers.has(path)
  if (!pidAlive(pid)) return true
  return Date.now() - (await stat(path)).mtimeMs > LEFTOVER_MAX_AGE_MS
}

function pidAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' // exists, owned by someone else
  }
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return await readdir(dir)
  } catch (err) {
    if (isNotFound(err) || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return []
    throw err
  }
}
