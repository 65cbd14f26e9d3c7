import type { BlobCache } from '../cache/blob-cache.js'
import type { BlobRef, BlobSource } from '../cache/types.js'
import { layerBlob, type OpenedModel } from '../index/open-model.js'
import type { FileNode } from '../index/tree.js'
import type { ModelLayer } from '../modelpack/types.js'
import { NotFoundError } from '../registry/errors.js'
import { CnaifsError, errorMessage } from '../util/errors.js'
import type { Logger } from '../util/log.js'
import { setTimeout as sleep } from 'node:timers/promises'
import { setMaxListeners } from 'node:events'

export type PrefetchMode = 'none' | 'meta' | 'all'

/** A byte range of a blob to bring into the cache. */
export interface PrefetchRange {
  blob: BlobRef
  start: number
  end: number // exclusive
  label: string
}

export interface PrefetcherOptions {
  model: OpenedModel
  cache: BlobCache
  sourceFor: (blob: BlobRef) => BlobSource
  log: Logger
  /** Cap on prefetch bandwidth (bytes/s); reads a process waits for are never capped. */
  bandwidthBytesPerSec?: number
  /** Parallel ranged GETs of prefetch. */
  concurrency?: number
  /** True while foreground reads are waiting: prefetch pauses briefly so they get the bandwidth. */
  foregroundBusy?: () => boolean
}

const PART_BYTES = 8 * 1024 * 1024
const META_KINDS = new Set(['weight.config', 'doc', 'code'])

/**
 * Fills the cache ahead of reads: `meta` brings weight.config and doc layers (small, read first by loaders);
 * `all` then every weight file, in parallel 8 MiB parts. Each finished blob is verified against its digest by
 * the cache (a part that completes a blob waits for that).
 */
export class Prefetcher {
  /** Fills in progress (a mount's --prefetch, `cnaifs prefetch MP`): the readiness document says "prefetching". */
  active = 0
  private stopped = false
  private readonly controller = new AbortController()

  constructor(private readonly o: PrefetcherOptions) {
    // Every part in flight listens on it: many listeners by design, not a leak.
    setMaxListeners(0, this.controller.signal)
  }

  stop(): void {
    this.stopped = true
    this.controller.abort()
  }

  rangesFor(mode: Exclude<PrefetchMode, 'none'>): PrefetchRange[] {
    const layers = this.o.model.manifest.layers
    const meta = layers.filter((l) => META_KINDS.has(l.kind))
    const chosen = mode === 'meta' ? meta : [...meta, ...layers.filter((l) => !META_KINDS.has(l.kind))]
    return chosen.map((l) => wholeLayer(this.o.model, l))
  }

  /** Ranges covering the named files (directories expand to every file below). */
  rangesForPaths(paths: string[]): PrefetchRange[] {
    const { tree } = this.o.model
    const out: PrefetchRange[] = []
    const seen = new Set<FileNode>()
    for (const p of paths) {
      const root = tree.lookup(p.replace(/^\/+/, ''))
      if (!root) throw new NotFoundError(`${p}: no such file in the model`)
      const nodes = root.kind === 'directory' ? [...tree.walk(root)].map((e) => e.node) : [root]
      for (const n of nodes) {
        if (n.kind !== 'file' || seen.has(n)) continue
        seen.add(n)
        out.push({ blob: layerBlob(this.o.model, n.layer), start: n.offset, end: n.offset + n.size, label: p })
      }
    }
    return out
  }

  async run(mode: Exclude<PrefetchMode, 'none'>, onProgress?: (done: number, total: number) => void): Promise<void> {
    await this.fill(this.rangesFor(mode), onProgress)
  }

  async fill(ranges: PrefetchRange[], onProgress?: (done: number, total: number) => void): Promise<void> {
    this.active++
    try {
      await this.fillNow(ranges, onProgress)
    } finally {
      this.active--
    }
  }

  private async fillNow(ranges: PrefetchRange[], onProgress?: (done: number, total: number) => void): Promise<void> {
    const parts = splitIntoParts(ranges, this.o.cache.blockSize)
    const total = parts.reduce((n, p) => n + p.bytes, 0)
    let done = 0
    let next = 0
    const started = Date.now()
    const worker = async () => {
      while (!this.stopped && next < parts.length) {
        const part = parts[next++]
        while (this.o.foregroundBusy?.() && !this.stopped) await sleep(5)
        await this.throttle(started, done)
        const lease = this.o.cache.lease(part.blob, this.o.sourceFor(part.blob))
        try {
          await lease.blob.ensure(part.first, part.last, this.controller.signal, { purpose: 'prefetch' })
        } catch (err) {
          if (this.stopped) return
          throw new CnaifsError('EPREFETCH', `prefetch of ${part.label}: ${errorMessage(err)}`, { cause: err })
        } finally {
          lease.release()
        }
        done += part.bytes
        onProgress?.(done, total)
      }
    }
    onProgress?.(0, total)
    await Promise.all(Array.from({ length: this.o.concurrency ?? 4 }, worker))
    this.o.log.info({ event: 'prefetch', bytes: done, ms: Date.now() - started }, 'prefetch finished')
  }

  private async throttle(started: number, done: number): Promise<void> {
    const rate = this.o.bandwidthBytesPerSec
    if (!rate) return
    const due = started + (done / rate) * 1000
    const wait = due - Date.now()
    if (wait > 0) await sleep(wait)
  }
}

/** A whole layer; a compressed one as its uncompressed content (what its files are read from). */
function wholeLayer(model: OpenedModel, l: ModelLayer): PrefetchRange {
  const blob = layerBlob(model, l.index)
  return { blob, start: 0, end: blob.size, label: l.path ?? `layer ${l.index}` }
}

interface Part { blob: BlobRef; first: number; last: number; bytes: number; label: string }

/** Block runs of at most PART_BYTES, skipping empty ranges; blocks shared by two ranges are fetched once. */
export function splitIntoParts(ranges: PrefetchRange[], blockSize: number): Part[] {
  const perPart = Math.max(1, Math.floor(PART_BYTES / blockSize))
  const parts: Part[] = []
  const seen = new Set<string>()
  for (const r of ranges) {
    if (r.end <= r.start) continue
    const first = Math.floor(r.start / blockSize)
    const last = Math.floor((r.end - 1) / blockSize)
    for (let b = first; b <= last; b += perPart) {
      const e = Math.min(last, b + perPart - 1)
      const key = `${r.blob.digest}:${b}`
      if (seen.has(key)) continue
      seen.add(key)
      const bytes = Math.min(r.blob.size, (e + 1) * blockSize) - b * blockSize
      parts.push({ blob: r.blob, first: b, last: e, bytes, label: r.label })
    }
  }
  return parts
}
