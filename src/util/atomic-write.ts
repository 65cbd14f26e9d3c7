import { randomBytes } from 'node:crypto'
import { mkdir, open, rename, unlink } from 'node:fs/promises'
import { dirname, join } from 'node:path'

/** Modes of everything cnaifs keeps on disk: only its owner may read a cache, a log or a socket. */
export const PRIVATE_DIR_MODE = 0o700
export const PRIVATE_FILE_MODE = 0o600

/**
 * Temp files are `.tmp-<pid>-<12 hex>` in the directory of their final name (the block cache's form too), so
 * one cleanup rule finds a crashed writer's leftovers: a name whose pid is not alive.
 */
export const ATOMIC_TEMP_PREFIX = '.tmp-'

/** A fresh temp name in `dir` for this process. */
export function tempPathIn(dir: string): string {
  return join(dir, `${ATOMIC_TEMP_PREFIX}${process.pid}-${randomBytes(6).toString('hex')}`)
}

/** Creates `dir` and its missing parents with mode 0700 (existing directories keep their mode). */
export async function mkdirPrivate(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: PRIVATE_DIR_MODE })
}

/** fsyncs a directory so that a rename or unlink in it survives power loss. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/**
 * Writes `data` as `path` durably and atomically: a temp file in the same directory (so the rename cannot
 * cross filesystems), created 0600 and exclusively, written and fsynced, renamed over `path`, then the
 * directory fsynced. After a crash or power loss `path` holds the old content or the new, never part of one.
 * A failed write removes its temp file and leaves `path` as it was.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, options: { mode?: number } = {}): Promise<void> {
  const dir = dirname(path)
  await mkdirPrivate(dir)
  const tmp = tempPathIn(dir)
  try {
    const fh = await open(tmp, 'wx', options.mode ?? PRIVATE_FILE_MODE)
    try {
      await fh.writeFile(data)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, path)
  } catch (err) {
    await unlink(tmp).catch(() => undefined)
    throw err
  }
  await fsyncDir(dir)
}
