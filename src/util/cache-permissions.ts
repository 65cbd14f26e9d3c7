import { chmod, lstat, readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { errorMessage } from './errors.js'
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, mkdirPrivate } from './atomic-write.js'

/** What cnaifs keeps in a cache directory; anything else there is not ours to change. */
export const CACHE_ENTRIES = ['index', 'blobs', 'blocks', 'compressed', 'logs', 'run'] as const

export interface TightenResult {
  /** Entries whose mode was changed. */
  changed: number
  /** Entries whose mode could not be changed (the first error is in `firstError`). */
  failed: number
  firstError?: string
  /** The cache root holds entries that are not cnaifs', so its own mode was left alone. */
  rootLeftAlone?: string
}

interface Warner { warn(obj: object, msg: string): void }

const WALK_CONCURRENCY = 32

/**
 * Makes an existing cache private to its owner, as new files are created: directories 0700, files and
 * sockets 0600 (caches written by earlier versions had 0755/0644). The root goes first, so the whole cache
 * is out of other users' reach before the (once, possibly long) walk of an old cache. The root is made 0700
 * only when it holds nothing but cnaifs' own entries, so `--cache-dir` pointed at a shared directory never
 * locks others out of it; the entries cnaifs owns are tightened in any case. Symbolic links are never
 * followed below the root. Failures are counted and reported in one warning, never thrown: a cache that
 * cannot be tightened still works.
 */
export async function tightenCacheDir(cacheDir: string, log?: Warner): Promise<TightenResult> {
  const result: TightenResult = { changed: 0, failed: 0 }
  let names: string[]
  try {
    names = await readdir(cacheDir)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    await mkdirPrivate(cacheDir)
    return result
  }
  const fix = async (path: string, mode: number, want: number): Promise<void> => {
    if ((mode & 0o7777) === want) return
    try {
      await chmod(path, want)
      result.changed++
    } catch (err) {
      result.failed++
      result.firstError ??= `${path}: ${errorMessage(err)}`
    }
  }

  const root = await stat(cacheDir)
  const foreign = names.filter((n) => !(CACHE_ENTRIES as readonly string[]).includes(n) && !n.startsWith('.tmp-'))
  if (foreign.length === 0) await fix(cacheDir, root.mode, PRIVATE_DIR_MODE)
  else if (root.mode & 0o077) result.rootLeftAlone = `${cacheDir} also holds ${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ', …' : ''}`

  // Depth-first, a directory made private only after everything in it: a directory found 0700 (and ours)
  // was finished by an earlier run, so a cache already tightened costs one lstat per top-level entry, not
  // one per block file. Everything below a 0700 directory is out of other users' reach in any case.
  const uid = process.getuid?.()
  const visit = async (path: string): Promise<void> => {
    let st
    try {
      st = await lstat(path)
    } catch {
      return // removed while we walked
    }
    if (st.isSymbolicLink()) return
    if (!st.isDirectory()) return fix(path, st.mode, PRIVATE_FILE_MODE)
    if ((st.mode & 0o7777) === PRIVATE_DIR_MODE && st.uid === uid) return
    const children = await readdir(path).catch(() => [] as string[])
    for (let i = 0; i < children.length; i += WALK_CONCURRENCY) {
      await Promise.all(children.slice(i, i + WALK_CONCURRENCY).map((c) => visit(join(path, c))))
    }
    await fix(path, st.mode, PRIVATE_DIR_MODE)
  }
  for (const n of names) if ((CACHE_ENTRIES as readonly string[]).includes(n)) await visit(join(cacheDir, n))

  if (log && result.failed) log.warn({ cacheDir, failed: result.failed, error: result.firstError }, 'could not make every cache file private')
  if (log && result.rootLeftAlone) log.warn({ cacheDir }, `cache directory left readable by others: ${result.rootLeftAlone}`)
  return result
}
