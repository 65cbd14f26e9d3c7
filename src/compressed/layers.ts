/**
 * What the commands and the daemon use: one object per process that indexes compressed layers for
 * openModel (the `compressed` hook), opens their views, and gives the cache a producer of each compressed
 * layer's uncompressed content (stored under its diffId), read through the view.
 */
import type { ModelLayer, ModelManifest } from '../modelpack/types.js'
import { silentLogger, type Logger } from '../util/log.js'
import { DecompressionError } from './errors.js'
import { openCompressedLayer, type BlobRef, type CheckpointView, type CompressedFormat } from './view.js'
import type { CompressedRangeReader } from './sequential.js'
import type { TarEntry } from '../index/tar.js'

/** Reads bytes of a layer blob as stored (a ranged GET). */
export type LayerBlobReader = (digest: string, offset: number, length: number, signal?: AbortSignal) => Promise<Buffer>
/** Reads bytes of a layer's uncompressed content (what the cache calls a produced source). */
export type ContentProducer = (offset: number, length: number, signal: AbortSignal) => Promise<Buffer>

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

  /** The openModel/buildModelTree hook: the layer's tar entries (uncompressed offsets), diffId and size. */
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
   * The uncompressed content of each compressed layer of the model, by the key the cache stores it under
   * (its diffId): a reader of bytes of it, through the layer's view. A diffId that is also the digest of an
   * uncompressed layer of the model is left out: that layer is read directly.
   */
  producers(model: { manifest: ModelManifest; layerViews?: Record<number, BlobRef> }): Map<string, ContentProducer> {
    const out = new Map<string, ContentProducer>()
    const plain = new Set(model.manifest.layers.filter((l) => !compressedFormat(l)).map((l) => l.descriptor.digest))
    for (const [i, key] of Object.entries(model.layerViews ?? {})) {
      const layer = model.manifest.layers[Number(i)]
      if (!layer || plain.has(key.digest)) continue
      out.set(key.digest, async (offset, length, signal) => (await this.view(layer)).read(offset, length, signal))
    }
    return out
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
