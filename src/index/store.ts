import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { digestHex } from '../util/digest.js'
import type { IndexEntry } from './tree.js'

/** What a finished index holds on disk: enough to mount with no registry at all. */
export interface ModelIndexFile {
  version: 1
  reference: string
  manifestDigest: string
  /** Manifest and config exactly as served (their digests can be re-checked). */
  manifest: string
  config: string
  createdAt: string
  defaultMtimeMs: number
  entries: IndexEntry[]
  /** Compressed layers by index: the key of their uncompressed content (diffId, size), which file offsets refer to. */
  layerViews?: Record<number, { digest: string; size: number }>
}

/** Which manifest a tag resolved to last, for offline mounts of a tag. */
export interface RefRecord {
  reference: string
  manifestDigest: string
  resolvedAt: string
}

export const INDEX_FORMAT_VERSION = 1

/** Writes to a temp file then renames: a crash leaves the old file or the new one, never half of one. */
export async function writeFileAtomic(path: string, data: string | Buffer): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`
  await writeFile(tmp, data, { mode: 0o644 })
  await rename(tmp, path)
}

/** Persisted indexes keyed by manifest digest, plus tag → digest records, under `<cacheDir>/index`. */
export class IndexStore {
  readonly dir: string
  constructor(cacheDir: string) {
    this.dir = join(cacheDir, 'index')
  }

  pathFor(manifestDigest: string): string {
    return join(this.dir, `${digestHex(manifestDigest)}.json`)
  }

  async load(manifestDigest: string): Promise<ModelIndexFile | undefined> {
    try {
      const doc = JSON.parse(await readFile(this.pathFor(manifestDigest), 'utf8')) as ModelIndexFile
      if (doc.version !== INDEX_FORMAT_VERSION || doc.manifestDigest !== manifestDigest) return undefined
      return doc
    } catch {
      return undefined // absent or unreadable: rebuilt from the registry
    }
  }

  async save(index: ModelIndexFile): Promise<void> {
    await mkdir(this.dir, { recursive: true })
    await writeFileAtomic(this.pathFor(index.manifestDigest), JSON.stringify(index))
  }

  private refPath(reference: string): string {
    return join(this.dir, 'refs', encodeURIComponent(reference) + '.json')
  }

  async saveRef(reference: string, manifestDigest: string): Promise<void> {
    await mkdir(join(this.dir, 'refs'), { recursive: true })
    const rec: RefRecord = { reference, manifestDigest, resolvedAt: new Date().toISOString() }
    await writeFileAtomic(this.refPath(reference), JSON.stringify(rec))
  }

  /** Removes a model's index and every tag record that points at it. */
  async remove(manifestDigest: string): Promise<void> {
    await rm(this.pathFor(manifestDigest), { force: true })
    const refsDir = join(this.dir, 'refs')
    for (const name of await readdir(refsDir).catch(() => [] as string[])) {
      const rec = await this.loadRef(decodeURIComponent(name.replace(/\.json$/, '')))
      if (rec?.manifestDigest === manifestDigest) await rm(join(refsDir, name), { force: true })
    }
  }

  async loadRef(reference: string): Promise<RefRecord | undefined> {
    try {
      return JSON.parse(await readFile(this.refPath(reference), 'utf8')) as RefRecord
    } catch {
      return undefined
    }
  }
}

export interface StoredIndexSummary {
  manifestDigest: string
  reference: string
  createdAt: string
  /** Layer blob digests with sizes, from the stored manifest; a compressed layer by its uncompressed key (what the block cache holds). */
  layers: { digest: string; size: number }[]
}

/** Every persisted index (for `cnaifs cache ls|rm`). Unreadable files are skipped. */
export async function listIndexes(store: IndexStore): Promise<StoredIndexSummary[]> {
  let names: string[]
  try {
    names = await readdir(store.dir)
  } catch {
    return []
  }
  const out: StoredIndexSummary[] = []
  for (const n of names.filter((x) => /^[a-f0-9]{64}\.json$/.test(x))) {
    const doc = await store.load('sha256:' + n.slice(0, 64))
    if (!doc) continue
    const manifest = JSON.parse(doc.manifest) as { layers?: { digest: string; size: number }[] }
    out.push({ manifestDigest: doc.manifestDigest, reference: doc.reference, createdAt: doc.createdAt, layers: (manifest.layers ?? []).map((l, i) => doc.layerViews?.[i] ?? { digest: l.digest, size: l.size }) })
  }
  return out
}
