/**
 * The blob cache's files on disk. Layout under `<cache-dir>/blobs`:
 *
 *   LAYOUT             "cnaifs blob cache 1" and the block size: a cache of another layout or block size is
 *                      refused, never misread
 *   <xx>/<hex>.data    the blob's bytes at their offsets (a sparse file: only cached blocks take space); a
 *                      complete raw-layer blob is byte for byte the model file
 *   <xx>/<hex>.map     which blocks the data file holds, with their sha256s (block-map.ts)
 *
 * xx is the digest's first two hex digits. Directories are 0700 and files 0600: a root mount of a private
 * model must not leak its bytes to other local users through the cache. A map is removed before its data
 * file, so a crash in between leaves an orphan data file (removed at the next start), never a map describing
 * missing bytes.
 */
import { chmod, mkdir, open, readdir, readFile, rename, rm, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, writeFileAtomic } from '../util/atomic-write.js'
import { CnaifsError, UsageError, errorMessage } from '../util/errors.js'
import type { Logger } from '../util/log.js'
import { HEADER_BYTES } from './block-map.js'

const LAYOUT_FILE = 'LAYOUT'
const LAYOUT_NAME = 'cnaifs blob cache 1'
const HEX_RE = /^[0-9a-f]{64}$/
/** A temp file of util/atomic-write.ts (a map being created) in a blob directory. */
const TEMP_RE = /^\.tmp-(\d+)-[0-9a-f]+$/
/** A temp file older than this is stale even if its pid is alive (pids get reused). */
const TEMP_MAX_AGE_MS = 60 * 60 * 1000

export const DIR_MODE = PRIVATE_DIR_MODE
export const FILE_MODE = PRIVATE_FILE_MODE

export interface BlobPaths {
  hex: string
  data: string
  map: string
}

/** What the start-up scan learns of a cached blob without opening its map. */
export interface StoredBlob {
  hex: string
  /** Disk space the data file takes (allocated blocks: it is sparse). */
  diskBytes: number
  /** Last use (map mtime), for least-recently-used eviction across restarts. */
  lastUseMs: number
}

export class BlobStore {
  readonly root: string

  constructor(cacheDir: string, readonly blockSize: number, private readonly log: Logger) {
    this.root = join(cacheDir, 'blobs')
  }

  paths(hex: string): BlobPaths {
    const dir = join(this.root, hex.slice(0, 2))
    return { hex, data: join(dir, `${hex}.data`), map: join(dir, `${hex}.map`) }
  }

  /**
   * Prepares the store: its directory (private), the layout record, the removal of an older cnaifs's block
   * cache and of crash leftovers; returns the blobs on disk.
   */
  async init(cacheDir: string): Promise<StoredBlob[]> {
    await mkdir(this.root, { recursive: true, mode: DIR_MODE })
    await chmod(this.root, DIR_MODE)
    await this.checkLayout()
    await this.removeLegacyCache(cacheDir)
    return this.scan()
  }

  /** Creates the directory a blob's files go in. */
  async prepare(hex: string): Promise<void> {
    await mkdir(join(this.root, hex.slice(0, 2)), { recursive: true, mode: DIR_MODE })
  }

  /** Removes a blob's files: the map first (see the header). */
  async remove(hex: string): Promise<void> {
    const p = this.paths(hex)
    for (const path of [p.map, p.data]) {
      try {
        await unlink(path)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      }
    }
  }

  /** The blob size and block size a map file records (for commands that list the cache). */
  async readMapHeader(hex: string): Promise<{ blobSize: number; blockSize: number } | undefined> {
    try {
      const fh = await open(this.paths(hex).map, 'r')
      try {
        const h = Buffer.alloc(HEADER_BYTES)
        const { bytesRead } = await fh.read(h, 0, HEADER_BYTES, 0)
        if (bytesRead !== HEADER_BYTES) return undefined
        return { blockSize: h.readUInt32LE(12), blobSize: Number(h.readBigUInt64LE(16)) }
      } finally {
        await fh.close()
      }
    } catch {
      return undefined
    }
  }

  private async checkLayout(): Promise<void> {
    const path = join(this.root, LAYOUT_FILE)
    const want = `${LAYOUT_NAME}\nblock-size ${this.blockSize}\n`
    let have: string | undefined
    try {
      have = await readFile(path, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    if (have === undefined) {
      await writeFileAtomic(path, want)
      return
    }
    if (have !== want) {
      const size = /block-size (\d+)/.exec(have)?.[1]
      throw new UsageError(`the blob cache ${this.root} was made ${size ? `with ${size}-byte blocks` : 'by another cnaifs version'}, not ${this.blockSize}-byte blocks: use the same settings or another cache directory`)
    }
  }

  /** cnaifs before 0.2 kept one file per 1 MiB block under `<cache-dir>/blocks`: those are not migrated. */
  private async removeLegacyCache(cacheDir: string): Promise<void> {
    const legacy = join(cacheDir, 'blocks')
    try {
      await stat(join(legacy, 'block-size'))
    } catch {
      return
    }
    const trash = join(cacheDir, `.blocks-removed-${process.pid}`)
    try {
      await rename(legacy, trash)
      await rm(trash, { recursive: true, force: true })
      this.log.warn({ path: legacy }, 'removed the block cache of an older cnaifs (one file per block); its blobs are fetched again when read')
    } catch (err) {
      this.log.warn({ path: legacy, error: errorMessage(err) }, 'cannot remove the block cache of an older cnaifs')
    }
  }

  private async scan(): Promise<StoredBlob[]> {
    const out: StoredBlob[] = []
    for (const top of await listDir(this.root)) {
      if (!/^[0-9a-f]{2}$/.test(top)) continue
      const dir = join(this.root, top)
      await chmod(dir, DIR_MODE).catch(() => undefined)
      const names = new Set(await listDir(dir))
      for (const name of names) {
        const path = join(dir, name)
        if (TEMP_RE.test(name)) { await removeStaleTemp(path, name, this.log); continue }
        const m = /^([0-9a-f]{64})\.(data|map)$/.exec(name)
        if (!m || !m[1]!.startsWith(top)) continue
        const hex = m[1]!
        if (m[2] === 'data') {
          if (!names.has(`${hex}.map`)) await unlink(path).catch(() => undefined) // orphan of an interrupted removal
          continue
        }
        const blob = await this.statBlob(hex)
        if (blob) out.push(blob)
      }
    }
    return out
  }

  private async statBlob(hex: string): Promise<StoredBlob | undefined> {
    const p = this.paths(hex)
    try {
      const [m, d] = await Promise.all([stat(p.map), stat(p.data).catch(() => undefined)])
      await Promise.all([chmod(p.map, FILE_MODE), d ? chmod(p.data, FILE_MODE) : undefined])
      return { hex, diskBytes: d ? d.blocks * 512 : 0, lastUseMs: m.mtimeMs }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw new CnaifsError('EIO', `blob cache: cannot inspect ${p.map}: ${errorMessage(err)}`)
    }
  }
}

export function isHex(s: string): boolean {
  return HEX_RE.test(s)
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return await readdir(dir)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'ENOTDIR') return []
    throw err
  }
}

async function removeStaleTemp(path: string, name: string, log: Logger): Promise<void> {
  const pid = Number(TEMP_RE.exec(name)?.[1])
  try {
    const alive = pidAlive(pid)
    if (alive && Date.now() - (await stat(path)).mtimeMs < TEMP_MAX_AGE_MS) return
    await rm(path, { force: true })
    log.debug({ path }, 'blob cache: removed a leftover temp file')
  } catch {
    // gone already, or not ours to remove
  }
}

function pidAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}
