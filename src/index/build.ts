import type { ModelLayer, ModelManifest } from '../modelpack/types.js'
import { CnaifsError, FormatError, errorMessage } from '../util/errors.js'
import { normaliseEntryPath, walkTar, type RangeSource, type TarEntry } from './tar.js'
import { FileTree } from './tree.js'

/** Reads bytes of a layer blob as stored (compressed or not): ranged GETs in production. */
export type LayerRangeReader = (layer: ModelLayer, offset: number, length: number) => Promise<Buffer>

/** Reads several ranges of a layer blob at once: one multi-range GET in production (RegistryClient.readBlobRanges). */
export type LayerRangesReader = (layer: ModelLayer, ranges: Array<{ offset: number; length: number }>) => Promise<Buffer[]>

/** A tar layer's first bytes: its first headers (and, for small files, all of them) are read in this window. */
export const TAR_HEAD_BYTES = 64 * 1024
/**
 * A tar layer's last bytes: after one big file they hold its end-of-archive blocks (and GNU tar's padding to a
 * 10 KiB record), so a single-file layer is indexed from its head and tail alone.
 */
export const TAR_TAIL_BYTES = 32 * 1024

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
  /** Parallel layer walks; each costs one GET (head and tail together) plus one per further 64 KiB of headers. */
  concurrency?: number
  /** mtime for raw files without metadata and for implicit directories (the model's creation time). */
  defaultMtimeMs?: number
  onLayerDone?: (done: number, total: number) => void
  /** Without it, tar+gzip and tar+zstd layers are refused (UnsupportedLayerError). */
  compressed?: CompressedLayerIndexer
  /** Reads a tar layer's head and tail together; without it they are two reads made in parallel. */
  readRanges?: LayerRangesReader
}

const RAW_FILE_MODE = 0o444

export function describeLayer(layer: ModelLayer): string {
  return `layer ${layer.index} (${layer.descriptor.digest.slice(0, 19)}…, ${layer.descriptor.mediaType})`
}

/**
 * Builds the model's file tree as `modctl extract` would lay it out: tar layers by the entry names inside the
 * tar, raw layers at their path annotation. Only tar headers are read (one request per layer for its head and
 * tail, which is all a small layer or a single large file needs); raw layers cost no request at all. Also
 * returns the uncompressed key of each compressed layer (by layer index): files of such layers are at offsets
 * of the uncompressed tar, read through src/compressed.
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
        walked.set(layer.index, await walkTar(source, { prefetched: await readHeadAndTail(layer, read, options.readRanges) }))
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

/**
 * A tar layer's head and tail in one request (the whole layer when they would meet): a layer of one big file, PAX
 * or not, is then indexed with a single GET, and a layer of small files with one GET per 64 KiB of headers.
 */
async function readHeadAndTail(layer: ModelLayer, read: LayerRangeReader, readRanges?: LayerRangesReader): Promise<Array<{ offset: number; bytes: Buffer }>> {
  const size = layer.descriptor.size
  if (size === 0) return []
  if (size <= TAR_HEAD_BYTES + TAR_TAIL_BYTES) return [{ offset: 0, bytes: await read(layer, 0, size) }]
  const ranges = [{ offset: 0, length: TAR_HEAD_BYTES }, { offset: size - TAR_TAIL_BYTES, length: TAR_TAIL_BYTES }]
  const parts = readRanges ? await readRanges(layer, ranges) : await Promise.all(ranges.map((r) => read(layer, r.offset, r.length)))
  return ranges.map((r, i) => {
    const bytes = parts[i]!
    if (bytes.length !== r.length) throw new Error(`short read from tar source: asked for ${r.length} bytes at ${r.offset}, got ${bytes.length}`)
    return { offset: r.offset, bytes }
  })
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
