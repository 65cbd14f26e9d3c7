import { createServer, type Server } from 'node:http'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { RegistryObserver } from '../registry/client.js'
import { logHealth } from '../util/log-destination.js'

export interface MetricsSamples {
  inFlight: () => { count: number; oldestMs: number; olderThan5s: number }
  diskBytes: () => number
  cacheWritable: () => boolean
}

/**
 * Prometheus metrics of one daemon (one mount). Names follow Prometheus conventions; `mount` labels let one
 * scrape config cover several daemons on a node.
 */
export class DaemonMetrics {
  readonly registry = new Registry()
  readonly fetchedBytes: Counter
  readonly registryRequests: Counter
  readonly cacheHits: Counter
  readonly cacheMisses: Counter
  readonly cacheHitBytes: Counter
  readonly readLatency: Histogram
  readonly readsInFlight: Gauge
  readonly readsHung: Gauge
  readonly cacheDiskBytes: Gauge
  readonly cacheChecks: Counter
  readonly cacheWriteErrors: Counter
  readonly cacheWritable: Gauge
  readonly corruptBlobs: Counter
  readonly fuseErrors: Counter
  readonly logDroppedLines: Gauge

  constructor(labels: { mount: string; reference: string }, sample: MetricsSamples, binding: string) {
    this.registry.setDefaultLabels(labels)
    collectDefaultMetrics({ register: this.registry, prefix: 'cnaifs_process_' })
    const r = [this.registry]
    this.fetchedBytes = new Counter({ name: 'cnaifs_registry_fetched_bytes_total', help: 'Blob bytes received from the registry', registers: r })
    this.registryRequests = new Counter({ name: 'cnaifs_registry_requests_total', help: 'Registry HTTP responses by kind and status', labelNames: ['kind', 'status'], registers: r })
    this.cacheHits = new Counter({ name: 'cnaifs_cache_hits_total', help: 'FUSE reads answered from the cache without waiting', registers: r })
    this.cacheHitBytes = new Counter({ name: 'cnaifs_cache_hit_bytes_total', help: 'Bytes of reads answered from the cache without waiting', registers: r })
    this.cacheMisses = new Counter({ name: 'cnaifs_cache_misses_total', help: 'FUSE reads that waited for a fetch or a check of cached blocks', registers: r })
    this.cacheChecks = new Counter({ name: 'cnaifs_cache_block_checks_total', help: 'Cached blocks re-hashed before their first use in this process, by result', labelNames: ['result'], registers: r })
    this.cacheWriteErrors = new Counter({ name: 'cnaifs_cache_write_errors_total', help: 'Writes into the cache that failed (full or failing disk)', registers: r })
    this.cacheWritable = new Gauge({ name: 'cnaifs_cache_writable', help: '1 while the cache takes writes, 0 while they fail', registers: r, collect() { this.set(sample.cacheWritable() ? 1 : 0) } })
    this.corruptBlobs = new Counter({ name: 'cnaifs_corrupt_blobs_total', help: 'Blobs whose content failed the sha256 check', registers: r })
    this.fuseErrors = new Counter({ name: 'cnaifs_fuse_errors_total', help: 'FUSE operations answered with an error', labelNames: ['op', 'errno'], registers: r })
    this.readLatency = new Histogram({
      name: 'cnaifs_read_duration_seconds', help: 'Latency of FUSE reads',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: r,
    })
    this.readsInFlight = new Gauge({ name: 'cnaifs_reads_in_flight', help: 'FUSE reads being served now', registers: r, collect() { this.set(sample.inFlight().count) } })
    this.readsHung = new Gauge({ name: 'cnaifs_reads_older_than_5s', help: 'FUSE reads in flight for more than 5 s (hung I/O)', registers: r, collect() { this.set(sample.inFlight().olderThan5s) } })
    this.logDroppedLines = new Gauge({ name: 'cnaifs_log_dropped_lines', help: 'Log lines dropped since start because the log could not be written (full or failing disk)', registers: r, collect() { this.set(logHealth().droppedLines) } })
    this.cacheDiskBytes = new Gauge({ name: 'cnaifs_cache_disk_bytes', help: 'Bytes of blocks in the disk cache', registers: r, collect() { this.set(sample.diskBytes()) } })
    new Gauge({ name: 'cnaifs_mount_info', help: 'Always 1; labels say which FUSE binding serves the mount', labelNames: ['binding'], registers: r }).set({ binding }, 1)
  }

  registryObserver(): RegistryObserver {
    return {
      onResponse: ({ kind, status, bytes }) => {
        this.registryRequests.inc({ kind, status: String(status) })
        if (bytes > 0) this.fetchedBytes.inc(bytes)
      },
    }
  }

  /** Serves /metrics on host:port; returns the server so the daemon can close it. */
  async serve(addr: string): Promise<Server> {
    const m = /^(?:(.*):)?(\d+)$/.exec(addr)
    if (!m) throw new Error(`--metrics-addr must be [host:]port, got ${JSON.stringify(addr)}`)
    const host = m[1] ? m[1].replace(/^\[|\]$/g, '') : '127.0.0.1'
    const server = createServer((req, res) => {
      if (req.url !== '/metrics') { res.writeHead(404).end('see /metrics\n'); return }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        (err: Error) => res.writeHead(500).end(err.message),
      )
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(Number(m[2]), host, () => resolve())
    })
    return server
  }
}
