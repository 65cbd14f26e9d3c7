import { readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { writeFileAtomic } from '../util/atomic-write.js'
import { digestHex } from '../util/digest.js'
import { sealJson } from '../util/sealed-json.js'
import { readStored, type Stored } from '../util/stored.js'
import { INDEX_FORMAT_VERSION, parseIndexFile, parseRefRecord } from './index-schema.js'
import type { IndexEntry } from './tree.js'

export { INDEX_FORMAT_VERSION }

/** What a finished index holds on disk: enough to mount with no registry at all. */
export interface ModelIndexFile {
  /** 2: written with a checksum (see util/sealed-json); 1: older files without one, still read. */
  version: 1 | 2
  reference: string
  manifestDigest: string
  /** The manifest exactly as served (its digest can be re-checked). */
  manifest: string
  /** Always '': the tree needs no config blob, so none is fetched or kept (the field stays for older readers). */
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

/**
 * Persisted indexes keyed by manifest digest, plus tag → digest records, under `<cacheDir>/index`. Files are
 * written durably (util/atomic-write) with a checksum and read back through a schema check: a damaged file
 * is reported as invalid, never half-used.
 */
export class IndexStore {
  readonly dir: string
  constructor(cacheDir: string) {
    this.dir = join(cacheDir, 'index')
  }

  pathFor(manifestDigest: string): string {
    return join(this.dir, `${digestHex(manifestDigest)}.json`)
  }

  refPath(reference: string): string {
    return join(this.dir, 'refs', encodeURIComponent(reference) + '.json')
  }

  /** The stored index of a manifest: ok, absent, or invalid with the reason. */
  read(manifestDigest: string): Promise<Stored<ModelIndexFile>> {
    return readStored(this.pathFor(manifestDigest), (text) => parseIndexFile(text, manifestDigest))
  }

  /** The stored index when it is there and valid. */
  async load(manifestDigest: string): Promise<ModelIndexFile | undefined> {
    const s = await this.read(manifestDigest)
    return s.state === 'ok' ? s.value : undefined
  }

  async save(index: Omit<ModelIndexFile, 'version'>): Promise<void> {
    const doc: ModelIndexFile = { version: INDEX_FORMAT_VERSION, ...index }
    await writeFileAtomic(this.pathFor(index.manifestDigest), sealJson(doc))
  }

  async saveRef(reference: string, manifestDigest: string): Promise<void> {
    const rec: RefRecord = { reference, manifestDigest, resolvedAt: new Date().toISOString() }
    await writeFileAtomic(this.refPath(reference), sealJson(rec))
  }

  readRef(reference: string): Promise<Stored<RefRecord>> {
    return readStored(this.refPath(reference), (text) => parseRefRecord(text, reference))
  }

  async loadRef(reference: string): Promise<RefRecord | undefined> {
    const s = await this.readRef(reference)
    return s.state === 'ok' ? s.value : undefined
  }

  /** Removes a model's index and every tag record that points at it. */
  async remove(manifestDigest: string): Promise<void> {
    await rm(this.pathFor(manifestDigest), { force: true })
    const refsDir = join(this.dir, 'refs')
    for (const name of await readdir(refsDir).catch(() => [] as string[])) {
      if (!name.endsWith('.json')) continue
      const rec = await this.loadRef(decodeURIComponent(name.slice(0, -'.json'.length)))
      if (rec?.manifestDigest === manifestDigest) await rm(join(refsDir, name), { force: true })
    }
  }
}

export interface StoredIndexSummary {
  manifestDigest: string
  reference: string
  createdAt: string
  /** Layer blob digests with sizes, from the stored manifest; a compressed layer by its uncompressed key (what the block cache holds). */
  layers: { digest: string; size: number }[]
  /** Digests of the compressed layer blobs, whose checkpoint indexes are under `<cacheDir>/compressed`. */
  compressedBlobs: string[]
}

/** Every persisted index (for `cnaifs cache ls|rm`). Invalid files are skipped: a mount rebuilds them. */
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
    // parseIndexFile has checked that the manifest parses and its layers are sha256 descriptors.
    const manifest = JSON.parse(doc.manifest) as { layers: { digest: string; size: number }[] }
    out.push({
      manifestDigest: doc.manifestDigest,
      reference: doc.reference,
      createdAt: doc.createdAt,
      layers: manifest.layers.map((l, i) => doc.layerViews?.[i] ?? { digest: l.digest, size: l.size }),
      compressedBlobs: manifest.layers.filter((_, i) => doc.layerViews?.[i]).map((l) => l.digest),
    })
  }
  return out
}
