/**
 * What the commands and the daemon use: one object per process that indexes compressed layers for
 * openModel (the `compressed` hook), opens their views, and gives the block cache a fetcher that serves a
 * compressed layer's uncompressed key (its diffId) through the view and every other blob from the registry.
 */
import type { ModelLayer, ModelManifest } from '../modelpack/types.js'
import { silentLogger, type Logger } from '../util/log.js'
import { DecompressionError } from './errors.js'
import { openCompressedLayer, type BlobRef, type CheckpointView, type CompressedFormat } from './view.js'
import type { CompressedRangeReader } from './sequential.js'
import type { TarEntry } from '../index/tar.js'

/** Reads bytes of a layer blob as stored (a ranged GET). */
export type LayerBlobReader = (digest: string, offset: number, length: number, signal?: AbortSignal) => Promise<Buffer>
/** Same shape as the block cache's BlobRangeFetcher (src/cache/types.ts), which this folder must not import. */
export type RangeFetcher = (blob: BlobRef, offset: number, length: number, signal: AbortSignal) => Promise<Buffer>

export interface CompressedLayerInfo {
  entries: TarEntry[]
  diffId: string
  size: number
}

export interface CompressedLayersOptions {
  cacheDir: string
  /** Ranged reads of layer blobs, for views opened without an index pass in this process. */
  read?: LayerBlobReader
  log?: Logger
  /** Indexing passes at once (they are CPU-bound; default 2). */
  concurrency?: number
  /** Uncompressed bytes between checkpoints (default 4 MiB). */
  spacing?: number
}

export function compressedFormat(layer: ModelLayer): CompressedFormat | undefined {
  return layer.form === 'tar+gzip' ? 'gzip' : layer.form === 'tar+zstd' ? 'zstd' : undefined
}

export class CompressedLayers {
  private readonly views = new Map<string, Promise<CheckpointView>>()
  private running = 0
  private readonly queue: (() => void)[] = []
  private readonly log: Logger

  constructor(private readonly o: CompressedLayersOptions) {
    this.log = o.log ?? silentLogger()
  }

  /** The openModel/buildTree hook: the layer's tar entries (uncompressed offsets), diffId and size. */
  readonly indexLayer = async (layer: ModelLayer, read: CompressedRangeReader): Promise<CompressedLayerInfo> => {
    try {
      const view = await this.open(layer, read)
      return { entries: view.index.entries, diffId: view.index.diffId, size: view.index.size }
    } catch (err) {
      // Name the layer as the tar walker's errors do (index and media type), not only its blob.
      if (err instanceof DecompressionError) throw new DecompressionError(`layer ${layer.index} (${layer.descriptor.mediaType}): ${err.message}`, { cause: err })
      throw err
    }
  }

  /** The view of a compressed layer (its index is loaded from the cache, or built if it is missing). */
  view(layer: ModelLayer): Promise<CheckpointView> {
    return this.open(layer)
  }

  /**
   * A fetcher for the block cache: a blob whose digest is the diffId of one of the model's compressed layers
   * is read through that layer's view; any other blob with `base`. (When the diffId is also the digest of an
   * uncompressed layer of the model, that layer is read directly.)
   */
  fetcher(model: { manifest: ModelManifest; layerViews?: Record<number, BlobRef> }, base: RangeFetcher): RangeFetcher {
    const byKey = new Map<string, ModelLayer>()
    const plain = new Set(model.manifest.layers.filter((l) => !compressedFormat(l)).map((l) => l.descriptor.digest))
    for (const [i, key] of Object.entries(model.layerViews ?? {})) {
      const layer = model.manifest.layers[Number(i)]
      if (layer && !plain.has(key.digest)) byKey.set(key.digest, layer)
    }
    if (byKey.size === 0) return base
    return async (blob, offset, length, signal) => {
      const layer = byKey.get(blob.digest)
      if (!layer) return base(blob, offset, length, signal)
      return (await this.view(layer)).read(offset, length, signal)
    }
  }

  private open(layer: ModelLayer, read?: CompressedRangeReader): Promise<CheckpointView> {
    const digest = layer.descriptor.digest
    let p = this.views.get(digest)
    if (!p) {
      p = this.openNow(layer, read)
      this.views.set(digest, p)
      p.catch(() => { if (this.views.get(digest) === p) this.views.delete(digest) })
    }
    return p
  }

  private async openNow(layer: ModelLayer, passRead?: CompressedRangeReader): Promise<CheckpointView> {
    const format = compressedFormat(layer)
    if (!format) throw new Error(`layer ${layer.index} (${layer.descriptor.mediaType}) is not a compressed tar layer`)
    const blobRead = this.o.read
    const read = blobRead ? ((offset: number, length: number, signal?: AbortSignal) => blobRead(layer.descriptor.digest, offset, length, signal)) : passRead
    if (!read) throw new Error(`no reader for layer ${layer.index}`)
    await this.acquire()
    try {
      const opened = await openCompressedLayer({
        cacheDir: this.o.cacheDir, blob: { digest: layer.descriptor.digest, size: layer.descriptor.size }, format,
        read: passRead ?? read, viewRead: read, spacing: this.o.spacing, log: this.log,
      })
      return opened.view
    } finally {
      this.release()
    }
  }

  private acquire(): Promise<void> {
    if (this.running < (this.o.concurrency ?? 2)) {
      this.running++
      return Promise.resolve()
    }
    return new Promise((r) => this.queue.push(() => { this.running++; r() }))
  }

  private release(): void {
    this.running--
    this.queue.shift()?.()
  }
}
