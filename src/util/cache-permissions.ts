import { chmod, lstat, readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { errorMessage } from './errors.js'
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, mkdirPrivate } from './atomic-write.js'

/** What cnaifs keeps in a cache directory; anything else there is not ours to change. */
export const CACHE_ENTRIES = ['index', 'blocks', 'compressed', 'logs', 'run'] as const

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
 * sockets 0600 (caches written by earlier versions had 0755/0644). The cache root is made 0700 only when it
 * holds nothing but cnaifs' own entries, so `--cache-dir` pointed at a shared directory never locks others
 * out of it; the entries cnaifs owns are tightened in any case. Symbolic links are never followed below the
 * root. Failures are counted and reported in one warning, never thrown: a cache that cannot be tightened
 * still works.
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

  // Breadth-first with a bounded number of directories read at once: a block cache has many small files.
  const queue = names.filter((n) => (CACHE_ENTRIES as readonly string[]).includes(n)).map((n) => join(cacheDir, n))
  const visit = async (path: string): Promise<void> => {
    let st
    try {
      st = await lstat(path)
    } catch {
      return // removed while we walked
    }
    if (st.isSymbolicLink()) return
    if (st.isDirectory()) {
      await fix(path, st.mode, PRIVATE_DIR_MODE)
      const children = await readdir(path).catch(() => [] as string[])
      for (const c of children) queue.push(join(path, c))
    } else {
      await fix(path, st.mode, PRIVATE_FILE_MODE)
    }
  }
  const workers = Array.from({ length: WALK_CONCURRENCY }, async () => {
    for (let next = queue.shift(); next !== undefined; next = queue.shift()) await visit(next)
  })
  await Promise.all(workers)

  if (log && result.failed) log.warn({ cacheDir, failed: result.failed, error: result.firstError }, 'could not make every cache file private')
  if (log && result.rootLeftAlone) log.warn({ cacheDir }, `cache directory left readable by others: ${result.rootLeftAlone}`)
  return result
}
