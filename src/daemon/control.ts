import { createHash } from 'node:crypto'
import { chmod, mkdir, rm } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { join, resolve } from 'node:path'
import type { BlobCache } from '../cache/blob-cache.js'
import type { FileDataPath } from '../cache/types.js'
import { layerBlob, type OpenedModel } from '../index/open-model.js'
import type { FileNode } from '../index/tree.js'
import { errorMessage } from '../util/errors.js'
import type { DaemonMetrics } from './metrics.js'
import type { Prefetcher } from './prefetch.js'

/** What `cnaifs status` prints: per-file cache fill and the daemon's counters. */
export interface MountStatus {
  reference: string
  digest: string
  mountpoint: string
  pid: number
  /** Which FUSE binding serves the mount: fuse3 (our libfuse 3 addon) or fuse-native (libfuse 2). */
  binding: string
  files: { path: string; size: number; cached: number }[]
  cacheDiskBytes: number
  /** False while writes into the cache fail (a full or failing disk: reads go on from memory and the registry). */
  cacheWritable: boolean
  cacheWriteFailures: number
  metrics: Record<string, number>
}

/** The control socket of the daemon serving `mountpoint`; short so it fits the 108-byte sun_path. */
export function controlSocketPath(cacheDir: string, mountpoint: string): string {
  const id = createHash('sha256').update(resolve(mountpoint)).digest('hex').slice(0, 16)
  return join(cacheDir, 'run', `${id}.sock`)
}

interface ControlDeps {
  model: OpenedModel
  reader: FileDataPath
  cache: BlobCache
  binding: string
  metrics: DaemonMetrics
  prefetcher: Prefetcher
  reference: string
}

/** HTTP over a unix socket, readable only by the daemon's user: status and prefetch requests from the CLI. */
export class ControlServer {
  private server?: Server
  readonly path: string

  constructor(cacheDir: string, private readonly mountpoint: string, private readonly deps: ControlDeps) {
    this.path = controlSocketPath(cacheDir, mountpoint)
  }

  async listen(): Promise<void> {
    await mkdir(join(this.path, '..'), { recursive: true, mode: 0o700 })
    await rm(this.path, { force: true }) // a socket left by a killed daemon
    this.server = createServer((req, res) => void this.handle(req, res))
    await new Promise<void>((ok, fail) => {
      this.server?.once('error', fail)
      this.server?.listen(this.path, () => ok())
    })
    await chmod(this.path, 0o600) // only the daemon's user may ask it anything (the directory is 0700 too)
  }

  async close(): Promise<void> {
    await new Promise<void>((ok) => (this.server ? this.server.close(() => ok()) : ok()))
    await rm(this.path, { force: true })
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      if (req.method === 'GET' && req.url === '/status') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(await this.status()))
      } else if (req.method === 'POST' && req.url === '/prefetch') {
        await this.prefetch(req, res)
      } else {
        res.writeHead(404).end()
      }
    } catch (err) {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ error: errorMessage(err) }) + '\n')
    }
  }

  private async status(): Promise<MountStatus> {
    const { model, reader, cache } = this.deps
    for (const l of model.manifest.layers) await cache.describe(layerBlob(model, l.index))
    const files: MountStatus['files'] = []
    const seen = new Set<FileNode>()
    for (const { path, node } of model.tree.walk()) {
      if (node.kind !== 'file' || seen.has(node)) continue
      seen.add(node)
      files.push({ path, size: node.size, cached: reader.cachedBytes({ blob: layerBlob(model, node.layer), offset: node.offset, size: node.size }) })
    }
    const metrics: Record<string, number> = {}
    for (const m of await this.deps.metrics.registry.getMetricsAsJSON()) {
      if (m.name.startsWith('cnaifs_process_')) continue
      for (const v of m.values as { value: number; labels: Record<string, string | number>; metricName?: string }[]) {
        const labels = Object.entries(v.labels).filter(([k]) => k !== 'mount' && k !== 'reference').map(([k, val]) => `${k}=${val}`).join(',')
        const key = (v.metricName ?? m.name) + (labels ? `{${labels}}` : '')
        if (key.includes('_bucket')) continue
        metrics[key] = v.value
      }
    }
    return {
      reference: this.deps.reference, digest: model.manifest.digest, mountpoint: this.mountpoint, pid: process.pid, binding: this.deps.binding,
      files, cacheDiskBytes: cache.diskBytes(), cacheWritable: cache.writable, cacheWriteFailures: cache.writeFailures, metrics,
    }
  }

  /** Streams newline-delimited JSON progress: {done,total} lines, then {finished:true} or {error}. */
  private async prefetch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const body = JSON.parse(Buffer.concat(chunks).toString() || '{}') as { paths?: string[] }
    const p = this.deps.prefetcher
    const ranges = body.paths?.length ? p.rangesForPaths(body.paths) : p.rangesFor('all')
    res.writeHead(200, { 'content-type': 'application/x-ndjson' })
    let last = 0
    try {
      await p.fill(ranges, (done, total) => {
        const now = Date.now()
        if (now - last > 200 || done === total) { last = now; res.write(JSON.stringify({ done, total }) + '\n') }
      })
      res.end(JSON.stringify({ finished: true }) + '\n')
    } catch (err) {
      res.end(JSON.stringify({ error: errorMessage(err) }) + '\n')
    }
  }
}
