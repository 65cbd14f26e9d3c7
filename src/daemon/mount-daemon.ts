import type { Server } from 'node:http'
import { join } from 'node:path'
import { BlockCache } from '../cache/block-cache.js'
import { CachedFileReader } from '../cache/reader.js'
import type { BlobRangeFetcher } from '../cache/types.js'
import { ModelFilesystem, clearStaleMount } from '../fuse/filesystem.js'
import { CompressedLayers } from '../compressed/layers.js'
import { layerBlob, openModel } from '../index/open-model.js'
import type { IndexStore } from '../index/store.js'
import type { RegistryClient } from '../registry/client.js'
import { formatReference, type ImageReference } from '../registry/reference.js'
import { CnaifsError, errorMessage } from '../util/errors.js'
import type { Logger } from '../util/log.js'
import { ControlServer } from './control.js'
import { DaemonMetrics } from './metrics.js'
import { DaemonNotifier } from './notify.js'
import { Prefetcher, type PrefetchMode } from './prefetch.js'
import { registerDaemon, type Registration } from './runtime-registry.js'
import { tightenCacheDir } from '../util/cache-permissions.js'

export interface MountDaemonOptions {
  ref: ImageReference
  mountpoint: string
  cacheDir: string
  cacheMaxBytes?: number
  memoryBudgetBytes: number
  readTimeoutMs: number
  allowOther: boolean
  uid?: number
  gid?: number
  metricsAddr?: string
  prefetch: PrefetchMode
  prefetchBandwidth?: number
  /** Where this daemon's log goes (a file, "journal", "stderr"), for the runtime registry. */
  logTarget?: string
}

export interface MountDaemonDeps {
  client: RegistryClient
  store: IndexStore
  log: Logger
}

/**
 * One mount's lifetime: open the model (index from cache or registry), mount, report ready, serve until a
 * signal, unmount cleanly. Everything the mount needs is built here, so `cnaifs mount --foreground` and the
 * systemd unit run exactly this.
 */
export async function runMountDaemon(o: MountDaemonOptions, deps: MountDaemonDeps, notifier = new DaemonNotifier()): Promise<void> {
  const { client, store, log } = deps
  const name = formatReference(o.ref)
  let fs: ModelFilesystem | undefined
  let metricsServer: Server | undefined
  let control: ControlServer | undefined
  let cache: BlockCache | undefined
  let registration: Registration | undefined
  try {
    await tightenCacheDir(o.cacheDir, log).catch((err) => log.warn({ cacheDir: o.cacheDir, error: errorMessage(err) }, 'could not make the cache private'))
    await notifier.status(`resolving ${name}`)
    if (await clearStaleMount(o.mountpoint)) log.warn({ mountpoint: o.mountpoint }, 'cleared a stale mount left by a previous daemon')
    // tar+gzip / tar+zstd layers: indexed once per blob; their files are read from the uncompressed content,
    // keyed (and verified by the block cache) by diffId, through checkpointed decompression.
    const compressed = new CompressedLayers({ cacheDir: o.cacheDir, read: (digest, offset, length, signal) => client.readBlobRange(o.ref, digest, offset, length, { signal }), log })
    const model = await openModel(client, o.ref, { store, log, compressed: compressed.indexLayer, onLayerDone: (d, t) => void notifier.status(`indexing layers ${d}/${t}`) })
    const layers = model.manifest.layers.map((l) => ({ ...layerBlob(model, l.index), mediaType: l.descriptor.mediaType }))

    let metrics: DaemonMetrics | undefined
    cache = new BlockCache({
      dir: join(o.cacheDir, 'blocks'),
      memoryBytes: Math.max(16 * 1024 * 1024, Math.floor(o.memoryBudgetBytes / 2)),
      maxDiskBytes: o.cacheMaxBytes,
      log,
      observer: {
        onHit: (tier, bytes) => { metrics?.cacheHits.inc({ tier }); metrics?.cacheHitBytes.inc({ tier }, bytes) },
        onMiss: () => metrics?.cacheMisses.inc(),
        onCorruptBlob: () => metrics?.corruptBlobs.inc(),
      },
    })
    await cache.init()
    const fetch: BlobRangeFetcher = compressed.fetcher(model, (blob, offset, length, signal) => client.readBlobRange(o.ref, blob.digest, offset, length, { signal }))
    const reader = new CachedFileReader({ cache, fetch, readTimeoutMs: o.readTimeoutMs, memoryBudgetBytes: Math.floor(o.memoryBudgetBytes / 2), log })
    fs = new ModelFilesystem(o.mountpoint, {
      tree: model.tree, layers, reader, uid: o.uid, gid: o.gid, allowOther: o.allowOther, log,
      onOp: (op, ms, errno) => {
        if (op === 'read') metrics?.readLatency.observe(ms / 1000)
        if (errno) metrics?.fuseErrors.inc({ op, errno: String(errno) })
      },
    })
    const mounted = fs
    metrics = new DaemonMetrics({ mount: o.mountpoint, reference: name }, {
      inFlight: () => { const r = mounted.inFlightReads(); return { count: r.count, oldestMs: r.oldestMs, olderThan5s: r.olderThan5s } },
      diskBytes: () => cache?.diskBytes() ?? 0,
    })
    // Registry counters are wired after construction: the client was built before the metrics existed.
    deps.client.setObserver(metrics.registryObserver())
    if (o.metricsAddr) metricsServer = await metrics.serve(o.metricsAddr)

    await fs.mount()
    // Prefetch yields while a process waits on a read: those get the bandwidth first.
    const prefetcher = new Prefetcher({ model, cache, fetch, log, bandwidthBytesPerSec: o.prefetchBandwidth, foregroundBusy: () => mounted.inFlightReads().count > 0 })
    control = new ControlServer(o.cacheDir, o.mountpoint, { model, reader, cache, metrics, prefetcher, reference: name })
    await control.listen()
    // Without an entry the mount still serves; status/unmount then need the --cache-dir it was made with.
    registration = await registerDaemon({ mountpoint: o.mountpoint, controlSocket: control.path, cacheDir: o.cacheDir, reference: name, digest: model.manifest.digest, log: o.logTarget ?? 'stderr' })
      .catch((err) => { log.warn({ error: errorMessage(err) }, 'could not register in the runtime registry'); return undefined })
    log.info({ event: 'mount', reference: name, digest: model.manifest.digest, mountpoint: o.mountpoint, index: model.source }, 'mounted')
    await notifier.ready({ mountpoint: o.mountpoint, digest: model.manifest.digest, index: model.source })
    if (o.prefetch !== 'none') void prefetcher.run(o.prefetch).catch((err) => log.warn({ error: errorMessage(err) }, 'prefetch stopped'))

    await waitForSignal()
    prefetcher.stop()
    await notifier.stopping()
  } catch (err) {
    notifier.failed(errorMessage(err), err instanceof CnaifsError ? err.code : undefined)
    throw err
  } finally {
    if (fs) {
      await fs.unmount().catch((err) => log.error({ error: errorMessage(err), mountpoint: o.mountpoint }, 'unmount failed'))
      log.info({ event: 'unmount', reference: name, mountpoint: o.mountpoint }, 'unmounted')
    }
    await control?.close()
    metricsServer?.close()
    await cache?.close()
    await client.close()
    await registration?.remove()
  }
}

function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
      process.off('SIGHUP', onSignal)
      resolve(sig)
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    process.on('SIGHUP', onSignal)
  })
}
