import type { RegistryClient } from '../registry/client.js'
import { DeadlineError, UnreachableError } from '../registry/errors.js'
import { formatReference, type ImageReference } from '../registry/reference.js'
import { parseModelManifest } from '../modelpack/manifest.js'
import { resolveModel, type ResolvedModel } from '../modelpack/resolve.js'
import type { ModelManifest } from '../modelpack/types.js'
import { silentLogger, type Logger } from '../util/log.js'
import { buildModelTree, type BuildTreeOptions, type LayerView } from './build.js'
import { IndexStore, type ModelIndexFile } from './store.js'
import { describeInvalid } from '../util/stored.js'
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
    return openOffline(ref, options.store, log, err)
  }

  const stored = await options.store.read(manifest.digest)
  if (stored.state === 'ok') {
    const tree = treeOf(stored.value)
    if (!(tree instanceof Error)) {
      await options.store.saveRef(name, manifest.digest)
      return { reference: ref, manifest, tree, source: 'cache', ...(stored.value.layerViews ? { layerViews: stored.value.layerViews } : {}) }
    }
    log.warn({ reference: name, file: stored.path, reason: tree.message }, `${describeInvalid('the cached index', { path: stored.path, reason: tree.message })}: rebuilding it from the registry`)
  } else if (stored.state === 'invalid') {
    log.warn({ reference: name, file: stored.path, reason: stored.reason }, `${describeInvalid('the cached index', stored)}: rebuilding it from the registry`)
  }
  const defaultMtimeMs = manifestTimeMs(manifest)
  const { tree, layerViews } = await buildModelTree(manifest, (layer, offset, length) =>
    client.readBlobRange(ref, layer.descriptor.digest, offset, length, { signal: options.signal }),
  {
    defaultMtimeMs, onLayerDone: options.onLayerDone, compressed: options.compressed,
    readRanges: (layer, ranges) => client.readBlobRanges(ref, layer.descriptor.digest, ranges, { signal: options.signal }),
  })
  const index: Omit<ModelIndexFile, 'version'> = {
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

/** The tree of a stored index, or the error that makes the index unusable (e.g. entries that collide). */
function treeOf(file: ModelIndexFile): FileTree | Error {
  try {
    return FileTree.fromEntries(file.entries, file.defaultMtimeMs)
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err))
  }
}

/**
 * The registry cannot be reached: a digest-pinned or previously resolved reference is served from its
 * persisted index. A stored file that is invalid fails with one line naming it (it cannot be rebuilt now).
 */
async function openOffline(ref: ImageReference, store: IndexStore, log: Logger, cause: UnreachableError | DeadlineError): Promise<OpenedModel> {
  const name = formatReference(ref)
  const unusable = (what: string, s: { path: string; reason: string }) =>
    new UnreachableError(`${cause.message}; and ${describeInvalid(what, s)} (remove it, or retry when the registry answers)`, { cause })
  let digest = ref.digest
  if (!digest) {
    const rec = await store.readRef(name)
    if (rec.state === 'invalid') throw unusable('the tag record', rec)
    digest = rec.state === 'ok' ? rec.value.manifestDigest : undefined
  }
  const stored = digest ? await store.read(digest) : undefined
  if (stored?.state === 'invalid') throw unusable('the cached index', stored)
  if (stored?.state !== 'ok') throw new UnreachableError(`${cause.message}; and no cached index for ${name}`, { cause })
  const file = stored.value
  const tree = treeOf(file)
  if (tree instanceof Error) throw unusable('the cached index', { path: stored.path, reason: tree.message })
  log.warn({ reference: name, digest: file.manifestDigest }, 'registry unreachable: using the cached index (offline)')
  // parseIndexFile checked the stored manifest against its digest and parsed it once already.
  const manifest = parseModelManifest(file.manifest, file.manifestDigest)
  return { reference: ref, manifest, tree, source: 'offline', ...(file.layerViews ? { layerViews: file.layerViews } : {}) }
}
