import type { RegistryClient } from '../registry/client.js'
import { DeadlineError, UnreachableError } from '../registry/errors.js'
import { formatReference, type ImageReference } from '../registry/reference.js'
import { parseModelManifest } from '../modelpack/manifest.js'
import { resolveModel, type ResolvedModel } from '../modelpack/resolve.js'
import type { ModelManifest } from '../modelpack/types.js'
import { sha256Digest } from '../util/digest.js'
import { CnaifsError } from '../util/errors.js'
import { silentLogger, type Logger } from '../util/log.js'
import { buildModelTree, type BuildTreeOptions, type LayerView } from './build.js'
import { INDEX_FORMAT_VERSION, IndexStore, type ModelIndexFile } from './store.js'
import { FileTree } from './tree.js'

export interface OpenedModel {
  reference: ImageReference
  manifest: ModelManifest
  tree: FileTree
  /** Where the tree came from: built now, the persisted index, or the persisted index while offline. */
  source: 'built' | 'cache' | 'offline'
  /** Compressed layers by index: the uncompressed content their files are read from (see layerBlob). */
  layerViews?: Record<number, LayerView>
}

/**
 * The blob a layer's files are read from, as the block cache knows it: the layer blob itself, or for a
 * compressed layer its uncompressed content keyed by diffId (read through src/compressed).
 */
export function layerBlob(model: Pick<OpenedModel, 'manifest' | 'layerViews'>, index: number): LayerView {
  const view = model.layerViews?.[index]
  if (view) return view
  const d = model.manifest.layers[index]!.descriptor
  return { digest: d.digest, size: d.size }
}

export interface OpenModelOptions {
  /** The manifest, when the caller has already fetched it (saves a second manifest GET). */
  resolved?: ResolvedModel
  store: IndexStore
  log?: Logger
  /** Use the persisted index when the registry cannot be reached (default true). */
  offline?: boolean
  onLayerDone?: BuildTreeOptions['onLayerDone']
  /** Indexes tar+gzip / tar+zstd layers (src/compressed's CompressedLayers.indexLayer); without it they are refused. */
  compressed?: BuildTreeOptions['compressed']
  signal?: AbortSignal
}

/** The creation time producers put on the manifest; used as mtime where nothing better exists. */
function manifestTimeMs(manifest: ModelManifest): number {
  const v = manifest.annotations['org.opencontainers.image.created'] ?? manifest.annotations['org.cncf.model.created']
  const ms = v ? Date.parse(v) : NaN
  return Number.isNaN(ms) ? 0 : ms
}

/**
 * Resolves a reference to its model and file tree, building and persisting the index the first time. The
 * config blob is not needed for the tree, so a cached model costs one manifest GET and no blob request; with
 * the registry down, a digest-pinned or previously resolved reference is served from the persisted index.
 */
export async function openModel(client: RegistryClient, ref: ImageReference, options: OpenModelOptions): Promise<OpenedModel> {
  const log = options.log ?? silentLogger()
  const name = formatReference(ref)
  let manifest: ModelManifest
  let manifestBytes: Buffer
  try {
    ({ manifest, manifestBytes } = options.resolved ?? await resolveModel(client, ref, options.signal))
  } catch (err) {
    if (options.offline === false || !(err instanceof UnreachableError || err instanceof DeadlineError)) throw err
    const digest = ref.digest ?? (await options.store.loadRef(name))?.manifestDigest
    const cached = digest ? await options.store.load(digest) : undefined
    if (!cached) throw new UnreachableError(`${err.message}; and no cached index for ${name}`, { cause: err })
    log.warn({ reference: name, digest: cached.manifestDigest }, 'registry unreachable: using the cached index (offline)')
    return { reference: ref, ...fromIndexFile(cached), source: 'offline' }
  }

  const cached = await options.store.load(manifest.digest)
  if (cached) {
    await options.store.saveRef(name, manifest.digest)
    return { reference: ref, manifest, tree: FileTree.fromEntries(cached.entries, cached.defaultMtimeMs), source: 'cache', ...(cached.layerViews ? { layerViews: cached.layerViews } : {}) }
  }
  const defaultMtimeMs = manifestTimeMs(manifest)
  const { tree, layerViews } = await buildModelTree(manifest, (layer, offset, length) =>
    client.readBlobRange(ref, layer.descriptor.digest, offset, length, { signal: options.signal }),
  {
    defaultMtimeMs, onLayerDone: options.onLayerDone, compressed: options.compressed,
    readRanges: (layer, ranges) => client.readBlobRanges(ref, layer.descriptor.digest, ranges, { signal: options.signal }),
  })
  const index: ModelIndexFile = {
    version: INDEX_FORMAT_VERSION,
    reference: name,
    manifestDigest: manifest.digest,
    manifest: manifestBytes.toString('utf8'),
    config: '',
    createdAt: new Date().toISOString(),
    defaultMtimeMs,
    entries: tree.toEntries(),
    ...(layerViews ? { layerViews } : {}),
  }
  await options.store.save(index)
  await options.store.saveRef(name, manifest.digest)
  log.debug({ reference: name, digest: manifest.digest, entries: index.entries.length }, 'index built')
  return { reference: ref, manifest, tree, source: 'built', ...(layerViews ? { layerViews } : {}) }
}

function fromIndexFile(file: ModelIndexFile): { manifest: ModelManifest; tree: FileTree; layerViews?: Record<number, LayerView> } {
  // The manifest is stored exactly as served, so a damaged index file is caught by its digest.
  if (sha256Digest(file.manifest) !== file.manifestDigest) throw new CnaifsError('EFORMAT', `cached index for ${file.reference} is corrupt (manifest digest mismatch)`)
  const manifest = parseModelManifest(file.manifest, file.manifestDigest)
  return { manifest, tree: FileTree.fromEntries(file.entries, file.defaultMtimeMs), ...(file.layerViews ? { layerViews: file.layerViews } : {}) }
}
