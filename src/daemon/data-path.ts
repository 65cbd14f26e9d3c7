/**
 * The composition root of a model's data path: the blob cache (with its fetch workers), where each blob's
 * bytes come from (the registry, or a compressed layer's view), the file reader the FUSE adapter calls and
 * the prefetcher. `cnaifs mount` (mount-daemon.ts) adds FUSE on top; `cnaifs prefetch REF` uses it alone.
 * Defaults come from src/util/defaults.ts; nothing else builds these parts.
 */
import { BlobCache, type BlobCacheObserver } from '../cache/blob-cache.js'
import { FileReader, type FileReaderObserver } from '../cache/file-reader.js'
import type { BlobRef, BlobSource } from '../cache/types.js'
import type { CompressedLayers } from '../compressed/layers.js'
import type { LayerInfo } from '../fuse/adapter.js'
import { layerBlob, type OpenedModel } from '../index/open-model.js'
import type { RegistryClient } from '../registry/client.js'
import { DEFAULTS } from '../util/defaults.js'
import type { Logger } from '../util/log.js'
import { Prefetcher } from './prefetch.js'

export interface DataPathOptions {
  cacheDir: string
  client: RegistryClient
  compressed: CompressedLayers
  model: OpenedModel
  log: Logger
  cacheMaxBytes?: number
  /** Memory for read-ahead in flight (half) and for blocks the disk refused (half). */
  memoryBudgetBytes?: number
  readTimeoutMs?: number
  workers?: number
  prefetchBandwidth?: number
  /** True while a process waits on a read: prefetch then yields. */
  foregroundBusy?: () => boolean
  cacheObserver?: BlobCacheObserver
  readerObserver?: FileReaderObserver
}

export interface DataPath {
  cache: BlobCache
  reader: FileReader
  prefetcher: Prefetcher
  /** The manifest's layers as the FUSE adapter shows them (compressed ones with their content key). */
  layers: LayerInfo[]
  sourceFor: (blob: BlobRef) => BlobSource
  close(): Promise<void>
}

export async function openDataPath(o: DataPathOptions): Promise<DataPath> {
  const budget = o.memoryBudgetBytes ?? DEFAULTS.read.memoryBudgetBytes
  const cache = new BlobCache({
    cacheDir: o.cacheDir,
    client: o.client.config,
    maxDiskBytes: o.cacheMaxBytes,
    memoryBytes: Math.floor(budget / 2),
    workers: o.workers,
    log: o.log,
    observer: o.cacheObserver,
  })
  await cache.init()
  const producers = o.compressed.producers(o.model)
  const registry: BlobSource = { kind: 'registry', reference: o.model.reference }
  const sourceFor = (blob: BlobRef): BlobSource => {
    const produce = producers.get(blob.digest)
    return produce ? { kind: 'produced', produce } : registry
  }
  const reader = new FileReader({
    cache,
    sourceFor,
    readTimeoutMs: o.readTimeoutMs,
    prefetchBudgetBytes: Math.floor(budget / 2),
    log: o.log,
    observer: o.readerObserver,
  })
  const prefetcher = new Prefetcher({
    model: o.model, cache, sourceFor, log: o.log, bandwidthBytesPerSec: o.prefetchBandwidth, foregroundBusy: o.foregroundBusy,
  })
  const layers: LayerInfo[] = o.model.manifest.layers.map((l) => {
    const content = o.model.layerViews?.[l.index]
    return {
      digest: l.descriptor.digest,
      mediaType: l.descriptor.mediaType,
      size: l.descriptor.size,
      ...(content ? { content: layerBlob(o.model, l.index) } : {}),
    }
  })
  return {
    cache, reader, prefetcher, layers, sourceFor,
    close: async () => {
      prefetcher.stop()
      await cache.close()
    },
  }
}
