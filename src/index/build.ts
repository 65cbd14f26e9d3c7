import type { ModelLayer, ModelManifest } from '../modelpack/types.js'
import { CnaifsError, FormatError, errorMessage } from '../util/errors.js'
import { normaliseEntryPath, walkTar, type RangeSource, type TarEntry } from './tar.js'
import { FileTree } from './tree.js'

/** Reads bytes of a layer blob as stored (compressed or not): ranged GETs in production. */
export type LayerRangeReader = (layer: ModelLayer, offset: number, length: number) => Promise<Buffer>

export class UnsupportedLayerError extends CnaifsError {
  constructor(message: string) {
    super('EUNSUPPORTED', message)
  }
}

/** What indexing a compressed (tar+gzip, tar+zstd) layer gives: its tar entries with uncompressed offsets, and the key of its uncompressed content. */
export interface CompressedLayerInfo {
  entries: TarEntry[]
  /** sha256 of the uncompressed tar (the layer's diffId) and its size. */
  diffId: string
  size: number
}

/** Indexes a compressed layer (one pass over it, kept per blob by the implementation: src/compressed). */
export type CompressedLayerIndexer = (layer: ModelLayer, read: (offset: number, length: number) => Promise<Buffer>) => Promise<CompressedLayerInfo>

/** The uncompressed content a compressed layer's files are read from: FileNode offsets are into it. */
export interface LayerView {
  digest: string
  size: number
}

export interface BuildTreeOptions {
  /** Parallel layer walks; each costs one or two ranged GETs. */
  concurrency?: number
  /** mtime for raw files without metadata and for implicit directories (the model's creation time). */
  defaultMtimeMs?: number
  onLayerDone?: (done: number, total: number) => void
  /** Without it, tar+gzip and tar+zstd layers are refused (UnsupportedLayerError). */
  compressed?: CompressedLayerIndexer
}

const RAW_FILE_MODE = 0o444

export function describeLayer(layer: ModelLayer): string {
  return `layer ${layer.index} (${layer.descriptor.digest.slice(0, 19)}…, ${layer.descriptor.mediaType})`
}

/**
 * Builds the model's file tree as `modctl extract` would lay it out: tar layers by the entry names inside the
 * tar, raw layers at their path annotation. Only tar headers are read (one ranged GET for a small layer, two
 * for a single large file); raw layers cost no request at all.
 */
export async function buildTree(manifest: ModelManifest, read: LayerRangeReader, options: BuildTreeOptions = {}): Promise<FileTree> {
  return (await buildModelTree(manifest, read, options)).tree
}

/**
 * buildTree, plus the uncompressed key of each compressed layer (by layer index): files of such layers are at
 * offsets of the uncompressed tar, read through src/compressed.
 */
export async function buildModelTree(manifest: ModelManifest, read: LayerRangeReader, options: BuildTreeOptions = {}): Promise<{ tree: FileTree; layerViews?: Record<number, LayerView> }> {
  const defaultMtimeMs = options.defaultMtimeMs ?? 0
  const tarLayers = manifest.layers.filter((l) => l.form !== 'raw')
  for (const l of tarLayers) {
    if (l.form !== 'tar' && !options.compressed) throw new UnsupportedLayerError(`${describeLayer(l)}: ${l.form} layers are not supported here`)
  }
  const walked = new Map<number, TarEntry[]>()
  const views = new Map<number, LayerView>()
  let done = 0
  const total = manifest.layers.length
  done += manifest.layers.length - tarLayers.length
  if (done) options.onLayerDone?.(done, total)
  await runBounded(tarLayers, options.concurrency ?? 8, async (layer) => {
    const source: RangeSource = { size: layer.descriptor.size, read: (offset, length) => read(layer, offset, length) }
    try {
      if (layer.form === 'tar') {
        walked.set(layer.index, await walkTar(source))
      } else {
        const info = await options.compressed!(layer, source.read)
        walked.set(layer.index, info.entries)
        views.set(layer.index, { digest: info.diffId, size: info.size })
      }
    } catch (err) {
      if (err instanceof CnaifsError && !(err instanceof FormatError)) throw err
      throw new FormatError(`${describeLayer(layer)}: ${errorMessage(err)}`, { cause: err })
    }
    options.onLayerDone?.(++done, total)
  })

  // Insert in layer order so inode numbers and collision messages do not depend on fetch timing.
  const tree = new FileTree(defaultMtimeMs)
  for (const layer of manifest.layers) {
    if (layer.form === 'raw') placeRaw(tree, layer, defaultMtimeMs)
    else placeTar(tree, layer, walked.get(layer.index) ?? [])
  }
  return views.size ? { tree, layerViews: Object.fromEntries(views) } : { tree }
}

function placeRaw(tree: FileTree, layer: ModelLayer, defaultMtimeMs: number): void {
  if (layer.path === undefined) throw new FormatError(`${describeLayer(layer)}: a raw layer without a path annotation cannot be placed`)
  let path: string
  try {
    path = normaliseEntryPath(layer.path)
  } catch (err) {
    throw new FormatError(`${describeLayer(layer)}: path annotation ${JSON.stringify(layer.path)}: ${errorMessage(err)}`)
  }
  const m = layer.metadata ?? {}
  tree.add(path, {
    kind: 'file',
    mode: m.mode ?? RAW_FILE_MODE,
    uid: m.uid ?? 0,
    gid: m.gid ?? 0,
    mtimeMs: m.mtimeMs ?? defaultMtimeMs,
    size: layer.descriptor.size, // the blob is the file: its size is authoritative, not the annotation's
    layer: layer.index,
    offset: 0,
  }, { layer: layer.index, what: `${describeLayer(layer)} file ${path}` })
}

function placeTar(tree: FileTree, layer: ModelLayer, entries: TarEntry[]): void {
  for (const e of entries) {
    const owner = { layer: layer.index, what: `${describeLayer(layer)} entry ${e.name}` }
    const meta = { mode: e.mode, uid: e.uid, gid: e.gid, mtimeMs: Math.round(e.mtime * 1000) }
    switch (e.type) {
      case 'directory': tree.add(e.name, { kind: 'directory', ...meta }, owner); break
      case 'file': tree.add(e.name, { kind: 'file', ...meta, size: e.size, layer: layer.index, offset: e.dataOffset }, owner); break
      case 'symlink': tree.add(e.name, { kind: 'symlink', ...meta, target: e.linkname ?? '' }, owner); break
      case 'hardlink': tree.link(e.name, e.linkname ?? '', owner); break
    }
  }
}

/** Runs `fn` over items with at most `limit` in flight; the first failure rejects (others finish quietly). */
export async function runBounded<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  let failed: unknown
  const worker = async () => {
    while (failed === undefined && next < items.length) {
      const item = items[next++]
      try {
        await fn(item)
      } catch (err) {
        failed ??= err
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  if (failed !== undefined) throw failed
}
