import type { Server } from 'node:http'
import type { CompressedLayers } from '../compressed/layers.js'
import { ModelFilesystem } from '../fuse/adapter.js'
import type { FuseSession } from '../fuse/binding.js'
import { clearStaleMount } from '../fuse/mount-table.js'
import { loadBinding } from '../fuse/select-binding.js'
import { layerBlob, openModel, type OpenedModel } from '../index/open-model.js'
import type { IndexStore } from '../index/store.js'
import type { RegistryClient } from '../registry/client.js'
import { formatReference, type ImageReference } from '../registry/reference.js'
import { DEFAULTS } from '../util/defaults.js'
import { CnaifsError, errorMessage } from '../util/errors.js'
import type { Logger } from '../util/log.js'
import { ControlServer } from './control.js'
import { openDataPath, type DataPath } from './data-path.js'
import { DaemonMetrics } from './metrics.js'
import { DaemonNotifier } from './notify.js'
import type { PrefetchMode } from './prefetch.js'
import { registerDaemon, type Registration } from './runtime-registry.js'
import { tightenCacheDir } from '../util/cache-permissions.js'

export interface MountDaemonOptions {
  ref: ImageReference
  mountpoint: string
  cacheDir: string
  cacheMaxBytes?: number
  memoryBudgetBytes: number
  /** The kernel's readahead for the mount (see DEFAULTS.fuse.readaheadBytes). */
  readaheadBytes?: number
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
  compressed: CompressedLayers
  log: Logger
}

/** How long an unmount may take before the daemon gives up waiting and exits anyway. */
const UNMOUNT_GRACE_MS = 5000

/** The readiness document's states, in the order a mount goes through them. */
export type MountState = 'mounted' | 'prefetching' | 'complete' | 'verified'

/**
 * One mount's lifetime, and the composition root of a mount: open the model (index from cache or registry),
 * wire the data path and FUSE, report ready, serve until a signal or until the mount goes away however it
 * went (our unmount, `fusermount -u[z]`, `umount -l`, the kernel aborting the connection), then clean up.
 * `cnaifs mount --foreground` and the systemd unit run exactly this.
 */
export async function runMountDaemon(o: MountDaemonOptions, deps: MountDaemonDeps, notifier = new DaemonNotifier()): Promise<void> {
  const { client, store, log } = deps
  const name = formatReference(o.ref)
  let session: FuseSession | undefined
  let metricsServer: Server | undefined
  let control: ControlServer | undefined
  let data: DataPath | undefined
  let registration: Registration | undefined
  const stop = stopSignals()
  try {
    await tightenCacheDir(o.cacheDir, log).catch((err) => log.warn({ cacheDir: o.cacheDir, error: errorMessage(err) }, 'could not make the cache private'))
    await notifier.status(`resolving ${name}`)
    if (await clearStaleMount(o.mountpoint)) log.warn({ mountpoint: o.mountpoint }, 'cleared a stale mount left by a previous daemon')
    const model = await openModel(client, o.ref, {
      store, log, compressed: deps.compressed.indexLayer, onLayerDone: (d, t) => void notifier.status(`indexing layers ${d}/${t}`),
    })
    const { binding, reason: bindingReason } = await loadBinding()
    if (binding.name !== 'fuse3') log.warn({ reason: bindingReason }, 'serving through fuse-native (libfuse 2): 128 KiB requests, slower than the libfuse 3 binding')

    let metrics: DaemonMetrics | undefined
    let fs: ModelFilesystem | undefined
    data = await openDataPath({
      cacheDir: o.cacheDir, client, compressed: deps.compressed, model, log,
      cacheMaxBytes: o.cacheMaxBytes, memoryBudgetBytes: o.memoryBudgetBytes, readTimeoutMs: o.readTimeoutMs,
      prefetchBandwidth: o.prefetchBandwidth,
      foregroundBusy: () => (fs?.inFlightReads().count ?? 0) > 0,
      cacheObserver: {
        onCorruptBlob: () => metrics?.corruptBlobs.inc(),
        onChecked: (ok) => metrics?.cacheChecks.inc({ result: ok ? 'match' : 'mismatch' }),
        onWriteError: () => metrics?.cacheWriteErrors.inc(),
        registry: { onResponse: (info) => metrics?.registryObserver().onResponse?.(info) },
      },
      readerObserver: {
        onRead: (hit, bytes) => {
          if (hit) { metrics?.cacheHits.inc(); metrics?.cacheHitBytes.inc(bytes) } else metrics?.cacheMisses.inc()
        },
      },
    })
    const dataPath = data
    for (const l of model.manifest.layers) await dataPath.cache.describe(layerBlob(model, l.index))
    fs = new ModelFilesystem({
      tree: model.tree, layers: dataPath.layers, data: dataPath.reader, uid: o.uid, gid: o.gid, log,
      status: () => statusDocument(model, dataPath, name, binding.name),
      onOp: (op, ms, errno) => {
        if (op === 'read') metrics?.readLatency.observe(ms / 1000)
        if (errno) metrics?.fuseErrors.inc({ op, errno: String(errno) })
      },
    })
    const mounted = fs
    metrics = new DaemonMetrics({ mount: o.mountpoint, reference: name }, {
      inFlight: () => mounted.inFlightReads(),
      diskBytes: () => dataPath.cache.diskBytes(),
      cacheWritable: () => dataPath.cache.writable,
    }, binding.name)
    client.setObserver(metrics.registryObserver())
    if (o.metricsAddr) metricsServer = await metrics.serve(o.metricsAddr)

    session = await binding.mount(o.mountpoint, fs, {
      fsname: `cnaifs:${name}`,
      subtype: 'cnaifs',
      allowOther: o.allowOther,
      attrTimeoutS: DEFAULTS.fuse.cacheTimeoutS,
      entryTimeoutS: DEFAULTS.fuse.cacheTimeoutS,
      negativeTimeoutS: DEFAULTS.fuse.cacheTimeoutS,
      readaheadBytes: o.readaheadBytes ?? DEFAULTS.fuse.readaheadBytes,
      maxBackground: DEFAULTS.fuse.maxBackground,
      congestionThreshold: DEFAULTS.fuse.congestionThreshold,
      onUnexpected: (op, err) => log.error({ op, error: errorMessage(err) }, 'FUSE operation failed unexpectedly'),
    })
    control = new ControlServer(o.cacheDir, o.mountpoint, {
      model, reader: dataPath.reader, cache: dataPath.cache, metrics, prefetcher: dataPath.prefetcher, reference: name, binding: binding.name,
    })
    await control.listen()
    // Without an entry the mount still serves; status/unmount then need the --cache-dir it was made with.
    registration = await registerDaemon({ mountpoint: o.mountpoint, controlSocket: control.path, cacheDir: o.cacheDir, reference: name, digest: model.manifest.digest, log: o.logTarget ?? 'stderr' })
      .catch((err) => { log.warn({ error: errorMessage(err) }, 'could not register in the runtime registry'); return undefined })
    log.info({ event: 'mount', reference: name, digest: model.manifest.digest, mountpoint: o.mountpoint, index: model.source, binding: binding.name, bindingReason, maxRead: session.maxRead }, 'mounted')
    await notifier.ready({ mountpoint: o.mountpoint, digest: model.manifest.digest, index: model.source })
    if (o.prefetch !== 'none') void dataPath.prefetcher.run(o.prefetch).catch((err) => log.warn({ error: errorMessage(err) }, 'prefetch stopped'))

    const why = await Promise.race([stop.signal, session.ended.then(() => 'the mount went away' as const)])
    log.info({ event: 'stopping', reason: typeof why === 'string' ? why : `signal ${why}`, mountpoint: o.mountpoint }, 'stopping')
    dataPath.prefetcher.stop()
    await notifier.stopping()
  } catch (err) {
    notifier.failed(errorMessage(err), err instanceof CnaifsError ? err.code : undefined)
    throw err
  } finally {
    stop.dispose()
    if (session) {
      const s = session
      const unmounted = s.unmount().catch((err) => log.error({ error: errorMessage(err), mountpoint: o.mountpoint }, 'unmount failed'))
      const late = await Promise.race([unmounted.then(() => false), sleep(UNMOUNT_GRACE_MS).then(() => true)])
      if (late) log.error({ mountpoint: o.mountpoint, pendingRequests: s.pendingRequests() }, `unmount did not finish within ${UNMOUNT_GRACE_MS / 1000} s; exiting anyway`)
      log.info({ event: 'unmount', reference: name, mountpoint: o.mountpoint }, 'unmounted')
    }
    await control?.close()
    metricsServer?.close()
    await data?.close()
    await client.close()
    await registration?.remove()
  }
}

/** The readiness document served at `.cnaifs/status` inside the mount. */
function statusDocument(model: OpenedModel, data: DataPath, reference: string, binding: string): object {
  let bytesTotal = 0
  let bytesCached = 0
  let blobsVerified = 0
  const blobs = model.manifest.layers.map((l) => layerBlob(model, l.index))
  for (const b of blobs) {
    bytesTotal += b.size
    bytesCached += data.cache.cachedBytes(b, 0, b.size)
    if (data.cache.isVerified(b)) blobsVerified++
  }
  const state: MountState = blobsVerified === blobs.length ? 'verified' : bytesCached === bytesTotal ? 'complete' : data.prefetcher.active > 0 ? 'prefetching' : 'mounted'
  return {
    state, reference, digest: model.manifest.digest, bytesCached, bytesTotal, blobsVerified, blobsTotal: blobs.length,
    binding, pid: process.pid, updatedAt: new Date().toISOString(),
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref())
}

/** SIGTERM, SIGINT and SIGHUP, the first of which stops the daemon. */
function stopSignals(): { signal: Promise<NodeJS.Signals>; dispose(): void } {
  let onSignal: (sig: NodeJS.Signals) => void = () => undefined
  const signal = new Promise<NodeJS.Signals>((resolve) => { onSignal = resolve })
  const sigs: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']
  for (const s of sigs) process.on(s, onSignal)
  return { signal, dispose: () => { for (const s of sigs) process.off(s, onSignal) } }
}
