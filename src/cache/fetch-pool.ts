/**
 * The main thread's side of the fetch workers: starts them, hands out jobs and routes their messages back.
 * Fetches and checks go to the least busy worker; a blob's running hash always to the same worker (a hash's
 * state cannot move between threads). A worker that dies fails its jobs (EIO) and is replaced.
 */
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import type { RegistryClientConfig, RegistryObserver } from '../registry/client.js'
import type { ImageReference } from '../registry/reference.js'
import { CnaifsError, type ErrorCode } from '../util/errors.js'
import { silentLogger, type Logger } from '../util/log.js'
import { fromWire } from './wire-error.js'
import type { FetchPurpose, FromWorker, ToWorker, WireError, WorkerSettings } from './worker-protocol.js'

export interface FetchPoolOptions {
  workers: number
  blockSize: number
  client: RegistryClientConfig
  log?: Logger
  /** Every registry response a worker saw (metrics). */
  observer?: RegistryObserver
  /** A worker could not write into a data file (the job goes on in memory). */
  onWriteError?: (path: string, error: CnaifsError) => void
}

/** A block that arrived, with its checksum: in the data file (`memory` undefined), or only in memory. */
export type LandedHandler = (block: number, checksum: number, memory?: Buffer) => void

export interface FetchRequest {
  reference: ImageReference
  digest: string
  blobSize: number
  offset: number
  length: number
  path: string
  purpose: FetchPurpose
}

export interface RunningJob {
  readonly done: Promise<void>
  abort(): void
  /** Asks to hear (through the job's onReached) once its range is written up to `position`. */
  watch?(position: number): void
}

/** A fetch's range is in the data file from its start up to `at`. */
export type ReachedHandler = (at: number) => void

interface Pending {
  worker: PoolWorker
  cost: number
  resolve: (value: FromWorker) => void
  reject: (err: Error) => void
  onLanded?: LandedHandler
  onReached?: ReachedHandler
  onWhole?: () => void
}

interface PoolWorker {
  thread: Worker
  busy: number
  index: number
}

/** The compiled worker script. Tests import the TypeScript sources; the worker runs the build in dist/. */
function workerScript(): URL {
  const here = fileURLToPath(import.meta.url)
  const compiled = here.replace(/\/src\/cache\/fetch-pool\.ts$/, '/dist/cache/fetch-pool.js')
  const url = new URL('./fetch-worker.js', `file://${compiled}`)
  if (!existsSync(fileURLToPath(url))) {
    throw new CnaifsError('EINVAL', `the fetch worker ${fileURLToPath(url)} is missing: build first (npm run build)`)
  }
  return url
}

export class FetchPool {
  private readonly workers: PoolWorker[] = []
  private readonly pending = new Map<number, Pending>()
  private readonly log: Logger
  private readonly settings: WorkerSettings
  private nextId = 1
  private closed = false

  constructor(private readonly o: FetchPoolOptions) {
    this.log = o.log ?? silentLogger()
    this.settings = { client: o.client, blockSize: o.blockSize }
    const script = workerScript()
    for (let i = 0; i < Math.max(1, o.workers); i++) this.workers.push(this.start(script, i))
  }

  get size(): number {
    return this.workers.length
  }

  /** A ranged GET into the data file; `onLanded` hears each block as it lands (extra blocks included). */
  fetch(r: FetchRequest, onLanded: LandedHandler, onReached?: ReachedHandler, onWhole?: () => void): RunningJob {
    const worker = this.leastBusy()
    const id = this.nextId++
    const done = this.run(worker, { t: 'fetch', id, ...r }, r.length, onLanded).then(() => undefined)
    const p = this.pending.get(id)
    if (p) { p.onReached = onReached; p.onWhole = onWhole }
    const live = (): boolean => this.pending.has(id)
    return {
      done,
      abort: () => { if (live()) worker.thread.postMessage({ t: 'abort', id } satisfies ToWorker) },
      watch: (position) => { if (live()) worker.thread.postMessage({ t: 'watch', id, position } satisfies ToWorker) },
    }
  }

  /** Writes bytes made here (block-aligned) into the data file; the Buffer is handed over, not copied. */
  store(path: string, blobSize: number, offset: number, data: Buffer, onLanded: LandedHandler): Promise<void> {
    const worker = this.leastBusy()
    const owned = data.byteOffset === 0 && data.byteLength === data.buffer.byteLength ? data : Buffer.from(data)
    const view = new Uint8Array(owned.buffer, 0, owned.byteLength)
    return this.run(worker, { t: 'store', id: this.nextId++, path, blobSize, offset, data: view }, data.length, onLanded, [owned.buffer as ArrayBuffer])
      .then(() => undefined)
  }

  /** Reads blocks back from the data file; true for each whose checksum is the expected one. */
  async check(path: string, blobSize: number, blocks: number[], checksums: number[]): Promise<boolean[]> {
    const reply = await this.run(this.leastBusy(), { t: 'check', id: this.nextId++, path, blobSize, blocks, checksums }, blocks.length * this.o.blockSize)
    return [...(reply as Extract<FromWorker, { t: 'checked' }>).ok].map((v) => v === 1)
  }

  /** Extends the running sha256 of a blob to byte `to`; gives the digest once the blob's end is reached. */
  async prefix(digest: string, path: string, blobSize: number, to: number): Promise<{ at: number; digest?: string }> {
    const reply = await this.run(this.affine(digest), { t: 'prefix', id: this.nextId++, digest, path, blobSize, to }, 0)
    const r = reply as Extract<FromWorker, { t: 'prefixed' }>
    return { at: r.at, ...(r.digest !== undefined ? { digest: r.digest } : {}) }
  }

  /** A blob's files are going away: every worker closes them and drops the blob's running hash. */
  forget(path: string, digest: string): void {
    for (const w of this.workers) w.thread.postMessage({ t: 'forget', path, digest } satisfies ToWorker)
  }

  /** Bytes of work in flight per worker (for status). */
  load(): number[] {
    return this.workers.map((w) => w.busy)
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    for (const p of this.pending.values()) p.reject(new CnaifsError('ECLOSED', 'the fetch workers are shutting down'))
    this.pending.clear()
    await Promise.all(this.workers.map((w) => w.thread.terminate()))
  }

  private run(worker: PoolWorker, message: ToWorker & { id: number }, cost: number, onLanded?: LandedHandler, transfer?: ArrayBuffer[]): Promise<FromWorker> {
    if (this.closed) return Promise.reject(new CnaifsError('ECLOSED', 'the fetch workers are shut down'))
    return new Promise<FromWorker>((resolve, reject) => {
      worker.busy += cost
      this.pending.set(message.id, { worker, cost, resolve, reject, onLanded })
      worker.thread.postMessage(message, transfer)
    })
  }

  private settle(id: number, outcome: { value?: FromWorker; error?: Error }): void {
    const p = this.pending.get(id)
    if (!p) return
    this.pending.delete(id)
    p.worker.busy -= p.cost
    if (outcome.error) p.reject(outcome.error)
    else p.resolve(outcome.value as FromWorker)
  }

  private onMessage(worker: PoolWorker, m: FromWorker): void {
    switch (m.t) {
      case 'landed': {
        const p = this.pending.get(m.id)
        if (!p?.onLanded) return
        const memory = m.memory ? Buffer.from(m.memory.buffer, m.memory.byteOffset, m.memory.byteLength) : undefined
        try {
          p.onLanded(m.block, m.checksum, memory)
        } catch (err) {
          this.log.error({ err }, 'fetch pool: landed handler threw')
        }
        return
      }
      case 'reached': this.pending.get(m.id)?.onReached?.(m.at); return
      case 'whole': this.pending.get(m.id)?.onWhole?.(); return
      case 'done': this.settle(m.id, { value: m }); return
      case 'checked': this.settle(m.id, { value: m }); return
      case 'prefixed': this.settle(m.id, { value: m }); return
      case 'failed': this.settle(m.id, { error: fromWire(m.error) }); return
      case 'write-error': this.o.onWriteError?.(m.path, fromWire(m.error)); return
      case 'response': this.o.observer?.onResponse?.(m.info); return
      case 'redirect':
        for (const w of this.workers) if (w !== worker) w.thread.postMessage({ t: 'redirect', digest: m.digest, url: m.url } satisfies ToWorker)
        return
    }
  }

  private start(script: URL, index: number): PoolWorker {
    const thread = new Worker(script, { workerData: this.settings, name: `cnaifs-fetch-${index}` })
    const worker: PoolWorker = { thread, busy: 0, index }
    thread.on('message', (m: FromWorker) => this.onMessage(worker, m))
    thread.on('error', (err) => this.log.error({ worker: index, error: err.message }, 'fetch worker failed'))
    thread.on('exit', (code) => {
      if (this.closed) return
      this.log.error({ worker: index, code }, 'fetch worker exited; starting a new one')
      const failure = (code2: ErrorCode): Error => new CnaifsError(code2, `fetch worker ${index} exited (code ${code}) during the job`)
      for (const [id, p] of [...this.pending]) if (p.worker === worker) this.settle(id, { error: failure('EIO') })
      this.workers[this.workers.indexOf(worker)] = this.start(script, index)
    })
    return worker
  }

  private leastBusy(): PoolWorker {
    let best = this.workers[0]!
    for (const w of this.workers) if (w.busy < best.busy) best = w
    return best
  }

  private affine(digest: string): PoolWorker {
    return this.workers[parseInt(digest.slice(-8), 16) % this.workers.length]!
  }
}

export type { WireError }
