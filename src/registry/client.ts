import { existsSync } from 'node:fs'
import type { Readable } from 'node:stream'
import { ProxyAgent, request, type Dispatcher } from 'undici'
import { sha256Digest } from '../util/digest.js'
import { CnaifsError, DigestMismatchError, errorMessage } from '../util/errors.js'
import { silentLogger, type Logger } from '../util/log.js'
import { Authenticator, type TokenFetch } from './auth.js'
import { FileCredentialStore, type CredentialStore, type CredentialStoreOptions } from './credentials.js'
import { RequestDeadline, type DeadlineBudget } from './deadline.js'
import { AuthError, DeadlineError, NotFoundError, RegistryError, UnreachableError } from './errors.js'
import { describePlan, directEndpoint, planEndpoints, type EndpointPlan } from './hosts/endpoints.js'
import { proxyEnvFrom, type ProxyEnv } from './hosts/proxy-env.js'
import { defaultRegistriesConfPaths } from './hosts/registries-conf.js'
import type { HostCapability, HostsConfig, RegistryEndpoint } from './hosts/types.js'
import { MANIFEST_ACCEPT } from './media-types.js'
import { byterangesBoundary, parseByteranges } from './multipart.js'
import { formatReference, manifestSelector, type ImageReference } from './reference.js'
import { backoffMs, isTransientNetworkError, parseRetryAfter, sleepWithin } from './retry.js'
import { Transport } from './transport.js'

/**
 * The plain-data part of a client's options: a worker thread given the same config builds a client that talks to
 * the same hosts, through the same proxies, with the same credentials, headers and deadlines (see `config`).
 */
export interface RegistryClientConfig {
  /** Where credentials come from (--username/--password-stdin, --authfile); default: Docker's, podman's and kubelet's files. */
  credentialSource?: CredentialStoreOptions
  /** Talk HTTP instead of HTTPS to hosts written without a scheme. Undefined: HTTP for loopback hosts only (as Docker does). */
  plainHttp?: boolean
  /** Skip TLS certificate verification on every host. */
  insecure?: boolean
  /** PEM bundle of a private CA, trusted on every host in addition to the system's. */
  caFile?: string
  /**
   * --request-timeout: a request's response headers must arrive within it, and the whole request, from connect to
   * its last body byte, must end within it plus the time its bytes take at `minTransferBytesPerSec`. Default 30 s.
   */
  requestTimeoutMs?: number
  /** The slowest transfer a request may make (see requestTimeoutMs). Default 1 MiB/s. */
  minTransferBytesPerSec?: number
  /** Attempts after the first for retryable failures (429, 5xx, dropped connections) at the last host of a request. */
  retries?: number
  /** Connections per origin: parallel ranged GETs need several. */
  connections?: number
  /** Mirrors and pull-through caches from containerd's hosts.toml or CRI-O's registries.conf. */
  hosts?: HostsConfig
  /** --header NAME:VALUE: sent to every registry host of a reference (never to redirect targets or token services). */
  headers?: Record<string, string>
  /** HTTP_PROXY / HTTPS_PROXY / NO_PROXY; default: the environment when the client is made. */
  proxy?: ProxyEnv
  /** X-Dragonfly-Priority on prefetch requests to Dragonfly hosts; unset: not sent. */
  dragonflyPrefetchPriority?: number
}

export interface RegistryClientOptions extends RegistryClientConfig {
  /** Overrides credentialSource (tests, or a store that is not file-based). */
  credentials?: CredentialStore
  log?: Logger
  observer?: RegistryObserver
  /** Told when a blob's redirect target is learned (url) or dropped (undefined), to share it with other clients. */
  onRedirect?: (digest: string, url: string | undefined) => void
}

/** Hooks for metrics: every HTTP exchange with a registry or token service is reported here. */
export interface RegistryObserver {
  onResponse?(info: { kind: 'manifest' | 'blob' | 'upload' | 'token'; status: number; bytes: number; durationMs: number }): void
}

export interface FetchedManifest {
  digest: string
  mediaType: string
  bytes: Buffer
}

export interface BlobInfo {
  size: number
}

export interface ReadOptions {
  /** Aborts retries and in-flight requests; a read deadline in the FUSE layer. */
  signal?: AbortSignal
  /** Why the bytes are wanted: prefetch requests to a Dragonfly host say so in headers. Default 'read'. */
  purpose?: 'read' | 'prefetch'
}

export interface StreamOptions extends ReadOptions {
  /**
   * When the server ignores Range and sends the whole blob, pass every byte of it to the sink (blob
   * positions outside the asked range included) instead of hanging up once the range has arrived.
   */
  keepExtra?: boolean
  /** Called when a response turns out to be the whole blob kept with keepExtra (before its first byte). */
  onWholeBlob?: () => void
}

/** Receives blob bytes at their blob position; a returned Promise holds the stream back until it settles. */
export type RangeSink = (chunk: Buffer, position: number) => void | Promise<void>

/** A part of a blob to read: `length` bytes at `offset`. */
export interface ByteRange {
  offset: number
  length: number
}

const MAX_MANIFEST_BYTES = 4 * 1024 * 1024
const MAX_SMALL_BLOB_BYTES = 16 * 1024 * 1024
const DEFAULT_TIMEOUT_MS = 30_000
const DEFAULT_MIN_RATE = 1024 * 1024
/** A host that could not be reached is tried after the others for this long (the last host is always tried). */
const COOLDOWN_MS = 15_000

type Operation = 'resolve' | 'pull' | 'push'
const CAPABILITY: Record<Operation, HostCapability> = { resolve: 'resolve', pull: 'pull', push: 'push' }

interface ExchangeOptions<T> {
  ref: ImageReference
  op: Operation
  scope: 'pull' | 'pull,push'
  kind: 'manifest' | 'blob' | 'upload'
  method: Dispatcher.HttpMethod
  /** After `<api>/<repository>/`: `manifests/<tag>`, `blobs/<digest>`… */
  path: string
  /** An absolute URL instead (an upload's Location), at the first host. */
  url?: string
  headers?: Record<string, string>
  body?: Buffer | string | (() => Readable)
  signal?: AbortSignal
  /** Statuses handed to `consume` (at a mirror only 2xx ones are: anything else falls over to the next host). */
  accept: number[]
  what: string
  /** Bytes the exchange moves (request or response body), for its deadline. */
  bytes?: number
  consume: (res: Dispatcher.ResponseData, deadline: RequestDeadline, endpoint: RegistryEndpoint) => Promise<T>
}

/**
 * An OCI distribution client: manifests, blob HEAD and ranged GETs, and pushes, with auth, retries that honour
 * Retry-After, resumable bodies, per-blob redirect caching, a total deadline per request, and the node's mirrors:
 * each request goes to the hosts containerd's hosts.toml or CRI-O's registries.conf name for the reference, in order,
 * falling over to the next on a connection error, a timeout or an error status.
 */
export class RegistryClient {
  private readonly auth: Authenticator
  private readonly log: Logger
  private readonly retries: number
  private readonly redirects = new Map<string, string>()
  private readonly options: RegistryClientOptions
  private readonly transport: Transport
  private readonly budget: DeadlineBudget
  private readonly plans = new Map<string, EndpointPlan>()
  private readonly cooling = new Map<string, number>()
  /** Origins that answered a multi-range request with a single range or the whole blob: ask them one range at a time. */
  private readonly noMultipart = new Set<string>()

  constructor(options: RegistryClientOptions) {
    this.options = { ...options }
    // Defaults that depend on the environment are fixed here, so `config` hands a worker the same values.
    this.options.proxy ??= proxyEnvFrom(process.env)
    this.options.hosts = { ...options.hosts }
    if (this.options.hosts.source !== 'none' && this.options.hosts.source !== 'containerd') {
      this.options.hosts.registriesConf ??= defaultRegistriesConfPaths(process.env, existsSync)
    }
    this.log = options.log ?? silentLogger()
    this.retries = options.retries ?? 4
    const timeoutMs = options.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS
    this.budget = { timeoutMs, minBytesPerSec: options.minTransferBytesPerSec ?? DEFAULT_MIN_RATE }
    this.transport = new Transport({
      connections: options.connections ?? 32,
      bodyIdleMs: timeoutMs,
      connectTimeoutMs: Math.min(timeoutMs, 10_000),
      proxy: this.options.proxy,
    })
    const credentials = options.credentials ?? new FileCredentialStore(options.credentialSource)
    this.auth = new Authenticator(credentials, this.tokenFetch, this.log, (status) =>
      this.options.observer?.onResponse?.({ kind: 'token', status, bytes: 0, durationMs: 0 }))
  }

  /** The plain-data options this client was built from, with environment defaults resolved (for worker threads). */
  get config(): RegistryClientConfig {
    const o = this.options
    const config: RegistryClientConfig = {
      credentialSource: o.credentialSource, plainHttp: o.plainHttp, insecure: o.insecure, caFile: o.caFile,
      requestTimeoutMs: o.requestTimeoutMs, minTransferBytesPerSec: o.minTransferBytesPerSec, retries: o.retries,
      connections: o.connections, hosts: o.hosts, headers: o.headers, proxy: o.proxy,
      dragonflyPrefetchPriority: o.dragonflyPrefetchPriority,
    }
    return structuredClone(config)
  }

  async close(): Promise<void> {
    await this.transport.close()
  }

  /** Replaces the metrics hooks (the daemon creates its metrics after the client). */
  setObserver(observer: RegistryObserver | undefined): void {
    this.options.observer = observer
  }

  /** The hosts tried for a reference, in order, and which file decided (logged once per repository). */
  endpointPlan(ref: ImageReference): EndpointPlan {
    const key = `${ref.registry}/${ref.repository}${ref.digest ? '@' : ':'}`
    let plan = this.plans.get(key)
    if (!plan) {
      plan = planEndpoints(ref, this.options.hosts ?? {}, this.defaults(), this.log)
      this.plans.set(key, plan)
      this.log.info({ registry: ref.registry, repository: ref.repository, ...describePlan(plan) }, 'registry hosts')
    }
    return plan
  }

  /** The URL of the repository at the reference's own registry (messages, tools). */
  baseUrl(ref: ImageReference): string {
    const e = directEndpoint(ref, this.defaults())
    return `${e.origin}${e.apiPath}/${e.repository}`
  }

  private defaults() {
    const o = this.options
    return { plainHttp: o.plainHttp, insecure: o.insecure, caFile: o.caFile, headers: o.headers }
  }

  /** Hosts that may serve `op`, in order; hosts cooling down after a failure are left out unless last. */
  private endpointsFor(ref: ImageReference, op: Operation): RegistryEndpoint[] {
    if (op === 'push') return [directEndpoint(ref, this.defaults())]
    const plan = this.endpointPlan(ref)
    const able = plan.endpoints.filter((e) => e.capabilities.includes(CAPABILITY[op]))
    if (!able.length) {
      const what = op === 'resolve' ? 'resolve tags (capability "resolve")' : 'serve content (capability "pull")'
      throw new RegistryError(`no host configured by ${plan.decidedBy} may ${what} for ${ref.registry}/${ref.repository}`, 0, 'ECONFIG')
    }
    const now = Date.now()
    return able.filter((e, i) => i === able.length - 1 || !((this.cooling.get(e.origin) ?? 0) > now))
  }

  private urlFor(e: RegistryEndpoint, path: string): string {
    return `${e.origin}${e.apiPath}/${e.repository}/${path}${e.ns ? `?ns=${encodeURIComponent(e.ns)}` : ''}`
  }

  private hostHeaders(e: RegistryEndpoint, purpose: ReadOptions['purpose']): Record<string, string> {
    if (!e.dragonfly || purpose !== 'prefetch') return e.headers
    const priority = this.options.dragonflyPrefetchPriority
    return { ...e.headers, 'x-dragonfly-prefetch': 'true', ...(priority !== undefined ? { 'x-dragonfly-priority': String(priority) } : {}) }
  }

  private dispatcher(e: RegistryEndpoint, url: string): Dispatcher {
    return this.transport.dispatcherFor(url, e.tls, e.dialTimeoutMs)
  }

  /** Token requests: through the transport (proxies), under a request deadline, with no registry headers. */
  private readonly tokenFetch: TokenFetch = async (url, init) => {
    const deadline = new RequestDeadline(undefined, this.budget, 0)
    const what = `token request to ${url.host}`
    try {
      const res = await this.call(url, {
        dispatcher: this.transport.dispatcherFor(url, { caFiles: this.options.caFile ? [this.options.caFile] : [], clientPairs: [], skipVerify: this.options.insecure === true }),
        method: init.method, headers: init.headers, body: init.body, signal: deadline.signal,
      })
      deadline.onHeaders()
      return { status: res.statusCode, text: await readLimited(res.body, MAX_MANIFEST_BYTES, what).then((b) => b.toString('utf8')) }
    } catch (err) {
      if (deadline.expired) throw deadline.error(what, url.host)
      if (err instanceof CnaifsError) throw err
      throw new UnreachableError(`${what}: ${errorMessage(err)}`, { cause: err })
    } finally {
      deadline.clear()
    }
  }

  /**
   * One HTTP request under a deadline. undici's ProxyAgent ignores an abort while it reconnects to a proxy that
   * drops CONNECT (it loops): a deadline then destroys that pool so the caller gets its error and the loop stops.
   */
  private call(url: string | URL, options: Omit<Parameters<typeof request>[1] & object, 'signal'> & { dispatcher: Dispatcher; signal: AbortSignal }): Promise<Dispatcher.ResponseData> {
    const pending = request(url, options) as unknown as Promise<Dispatcher.ResponseData>
    const { dispatcher, signal } = options
    if (!(dispatcher instanceof ProxyAgent)) return pending
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        this.transport.discard(dispatcher)
        reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'))
      }
      if (signal.aborted) return onAbort()
      signal.addEventListener('abort', onAbort, { once: true })
      pending.then(
        (res) => { signal.removeEventListener('abort', onAbort); resolve(res) },
        (err) => { signal.removeEventListener('abort', onAbort); reject(err) },
      )
    })
  }

  /** GET a manifest or index; verifies its bytes against the pinned digest, or records the digest it has. */
  async getManifest(ref: ImageReference, selector: string = manifestSelector(ref), options: ReadOptions = {}): Promise<FetchedManifest> {
    const byDigest = selector.startsWith('sha256:')
    const what = `manifest ${formatReference({ ...ref, tag: byDigest ? undefined : selector, digest: byDigest ? selector : undefined })}`
    return this.exchange({
      ref, op: byDigest ? 'pull' : 'resolve', scope: 'pull', kind: 'manifest', method: 'GET', path: `manifests/${selector}`,
      headers: { accept: MANIFEST_ACCEPT }, accept: [200], what, signal: options.signal,
      consume: async (res) => {
        const bytes = await readLimited(res.body, MAX_MANIFEST_BYTES, what)
        const digest = sha256Digest(bytes)
        if (byDigest && digest !== selector) throw new DigestMismatchError(what, selector, digest)
        const headerDigest = header(res.headers, 'docker-content-digest')
        if (headerDigest && headerDigest.startsWith('sha256:') && headerDigest !== digest) {
          throw new DigestMismatchError(`${what} (Docker-Content-Digest)`, headerDigest, digest)
        }
        const mediaType = (header(res.headers, 'content-type') ?? '').split(';')[0].trim()
        return { digest, mediaType, bytes }
      },
    })
  }

  async headBlob(ref: ImageReference, digest: string, options: ReadOptions = {}): Promise<BlobInfo | undefined> {
    return this.exchange({
      ref, op: 'pull', scope: 'pull', kind: 'blob', method: 'HEAD', path: `blobs/${digest}`,
      accept: [200, 404], what: `blob ${digest}`, signal: options.signal,
      consume: async (res) => {
        await res.body.dump()
        if (res.statusCode === 404) return undefined
        return { size: Number(header(res.headers, 'content-length') ?? '0') }
      },
    })
  }

  /** A whole small blob (a config), verified against its digest. */
  async getBlob(ref: ImageReference, digest: string, options: ReadOptions = {}): Promise<Buffer> {
    const what = `blob ${digest} of ${ref.repository}`
    return this.exchange({
      ref, op: 'pull', scope: 'pull', kind: 'blob', method: 'GET', path: `blobs/${digest}`,
      accept: [200], what, signal: options.signal,
      consume: async (res, deadline) => {
        const length = Number(header(res.headers, 'content-length') ?? NaN)
        deadline.onHeaders(Number.isFinite(length) ? length : undefined)
        const bytes = await readLimited(res.body, MAX_SMALL_BLOB_BYTES, what)
        const actual = sha256Digest(bytes)
        if (actual !== digest) throw new DigestMismatchError(what, digest, actual)
        return bytes
      },
    })
  }

  /**
   * Reads exactly `length` bytes at `offset` of a blob into one Buffer (see streamBlobRange for what is
   * tolerated of servers). Never asks for a range at or past the blob's end: the caller knows the size.
   */
  async readBlobRange(ref: ImageReference, digest: string, offset: number, length: number, options: ReadOptions = {}): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length)
    if (length === 0) return out
    const end = offset + length
    await this.streamBlobRange(ref, digest, offset, length, (chunk, position) => {
      // Only the asked range is kept; streamBlobRange delivers nothing outside it unless keepExtra is set.
      const from = Math.max(position, offset)
      const to = Math.min(position + chunk.length, end)
      if (to > from) chunk.copy(out, from - offset, from - position, to - position)
    }, options)
    return out
  }

  /**
   * Several ranges of a blob (a tar layer's head and tail) in one request, `Range: bytes=a-b,c-d`, answered with
   * `multipart/byteranges` where the server can (distribution does). A server that answers with one range or the
   * whole blob is used for what it sent; whatever is still missing is read with one ranged GET per range, in
   * parallel, and the host is asked one range at a time from then on. Ranges must not overlap.
   */
  async readBlobRanges(ref: ImageReference, digest: string, ranges: ByteRange[], options: ReadOptions = {}): Promise<Buffer[]> {
    const wanted = ranges.filter((r) => r.length > 0)
    const outs: Buffer[] = ranges.map((r) => Buffer.allocUnsafe(r.length))
    if (wanted.length <= 1) {
      await Promise.all(ranges.map(async (r, i) => { if (r.length) outs[i] = await this.readBlobRange(ref, digest, r.offset, r.length, options) }))
      return outs
    }
    const filled = ranges.map(() => new IntervalSet())
    const place = (chunk: Buffer, position: number): void => {
      ranges.forEach((r, i) => {
        const from = Math.max(position, r.offset)
        const to = Math.min(position + chunk.length, r.offset + r.length)
        if (to <= from) return
        chunk.copy(outs[i]!, from - r.offset, from - position, to - position)
        filled[i]!.add(from, to)
      })
    }
    const endpoints = this.endpointsFor(ref, 'pull')
    const first = endpoints[0]!
    if (!this.noMultipart.has(first.origin) && !this.redirects.has(digest)) {
      try {
        await this.multiRangeOnce(digest, ranges, first, place, options)
      } catch (err) {
        if (err instanceof DeadlineError) {
          // Too slow: at a mirror, pass it over (the ranged reads below go on to the next host); at the only host,
          // a caller without its own deadline gets the error now rather than a second slow try.
          if (options.signal?.aborted || (endpoints.length === 1 && !options.signal)) throw err
          if (endpoints.length > 1) this.fallOver(first, err, `blob ${digest.slice(0, 19)}`)
        }
        this.log.debug({ what: `blob ${digest.slice(0, 19)}`, host: first.host, error: errorMessage(err) }, 'multi-range request failed: reading the ranges one by one')
      }
    }
    await Promise.all(ranges.map(async (r, i) => {
      for (const [a, b] of filled[i]!.missing(r.offset, r.offset + r.length)) {
        const bytes = await this.readBlobRange(ref, digest, a, b - a, options)
        bytes.copy(outs[i]!, a - r.offset)
      }
    }))
    return outs
  }

  /** One multi-range GET at the first host; places what it gets. Failures are the caller's to recover from. */
  private async multiRangeOnce(digest: string, ranges: ByteRange[], e: RegistryEndpoint, place: RangeSink, options: ReadOptions): Promise<void> {
    const what = `blob ${digest.slice(0, 19)} ranges ${ranges.map((r) => `${r.offset}+${r.length}`).join(',')}`
    const total = ranges.reduce((n, r) => n + r.length, 0)
    const spec = ranges.filter((r) => r.length > 0).map((r) => `${r.offset}-${r.offset + r.length - 1}`).join(',')
    const url = this.urlFor(e, `blobs/${digest}`)
    const deadline = new RequestDeadline(options.signal, this.budget, total)
    const began = Date.now()
    try {
      const res = await this.call(url, {
        dispatcher: this.dispatcher(e, url), method: 'GET', signal: deadline.signal,
        headers: { ...this.hostHeaders(e, options.purpose), range: `bytes=${spec}`, ...(await this.authHeaders(e, 'pull')) },
      })
      deadline.onHeaders()
      const status = res.statusCode
      const location = header(res.headers, 'location')
      if (status >= 300 && status < 400 && location) {
        // Blobs served from an object store: those rarely serve several ranges at once (S3 does not), so the
        // ranges are read one by one from the redirect target, and this host is asked so from now on.
        await res.body.dump()
        this.rememberRedirect(digest, checkRedirect(location, url, what))
        this.noMultipart.add(e.origin)
        return
      }
      if (status !== 206 && status !== 200) {
        await res.body.dump()
        throw new RegistryError(`${what}: HTTP ${status}`, status)
      }
      const boundary = byterangesBoundary(header(res.headers, 'content-type'))
      // A multipart body is one whatever the status says (a 200 may carry partial content, see streamBlobRange).
      if (boundary) {
        const body = await readLimited(res.body, total + 64 * 1024, what)
        for (const part of parseByteranges(body, boundary)) place(part.bytes, part.start)
        this.report('blob', status, body.length, began)
        return
      }
      // One range (the first, or a coalesced span) or the whole blob: use what comes until every range is covered.
      this.noMultipart.add(e.origin)
      const cr = header(res.headers, 'content-range')
      let position = 0
      if (cr !== undefined) {
        const parsed = parseContentRange(cr)
        if (!parsed) { await res.body.dump(); throw new RegistryError(`${what}: bad Content-Range ${JSON.stringify(cr)}`, status) }
        position = parsed.start
      }
      const lastByte = Math.max(...ranges.map((r) => r.offset + r.length))
      let received = 0
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        place(chunk, position)
        position += chunk.length
        received += chunk.length
        if (position >= lastByte) break
      }
      res.body.destroy()
      this.report('blob', status, received, began)
    } catch (err) {
      if (deadline.expired) throw deadline.error(what, e.host)
      if (options.signal?.aborted) throw new DeadlineError(`${what}: deadline exceeded`)
      throw err
    } finally {
      deadline.clear()
    }
  }

  /**
   * Streams `length` bytes at `offset` of a blob to `sink` as they arrive, with `Range` requests: each chunk
   * is passed with its blob position, in order, exactly once. What servers may do, and what is done:
   * - 206 with a Content-Range that starts where asked: the body is the range.
   * - 200 with a Content-Range (Dragonfly before 1.3.11 answers ranges so): a partial reply, treated as 206.
   * - 200 without one: the server ignored Range and sends the whole blob. With `keepExtra` every byte of it is
   *   passed to the sink (a pull-through cache filling itself would abort if we hung up early; the caller
   *   stores the extra blocks); without, the bytes before and after the range are skipped and the connection
   *   is closed once the range has arrived.
   * - A body cut short is resumed at the byte where it stopped; a redirect target is remembered per blob
   *   until it fails.
   * The hosts of the reference are tried in order: a connection error, a request deadline or an error status at one
   * moves to the next (a resume included: no byte is passed twice, whichever host sends it); the last host gets
   * the retries. Resolves once the response is consumed; the sink may return a Promise to hold the stream back.
   */
  async streamBlobRange(ref: ImageReference, digest: string, offset: number, length: number, sink: RangeSink, options: StreamOptions = {}): Promise<void> {
    if (length === 0) return
    const stop = offset + length
    // Blob bytes already passed to the sink, so a resumed or repeated whole-blob response never passes a byte
    // twice; `filled` is how much of the asked range they cover from its start (what a resume skips).
    const passed = new IntervalSet()
    const filled = (): number => passed.coveredFrom(offset, stop) - offset
    const what = `blob ${digest.slice(0, 19)} range ${offset}+${length}`
    const endpoints = this.endpointsFor(ref, 'pull')
    let ei = 0
    let attempt = 0
    let authAttempts = 0
    let redirectHops = 0
    let redirectRefusals = 0
    /** Moves to the next host, or (at the last) retries or throws. */
    const failed = async (err: unknown, retryAfterMs?: number): Promise<void> => {
      const e = endpoints[ei]!
      if (ei < endpoints.length - 1) {
        this.fallOver(e, err, what)
        ei++
        attempt = 0
        authAttempts = 0
        return
      }
      if (err instanceof DeadlineError && !options.signal) throw err
      attempt = await this.retryOrThrow(attempt, err, what, options.signal, retryAfterMs)
    }
    while (filled() < length) {
      if (options.signal?.aborted) throw new DeadlineError(`${what}: deadline exceeded`)
      const e = endpoints[ei]!
      const hostUrl = this.urlFor(e, `blobs/${digest}`)
      const redirected = this.redirects.get(digest)
      const target = redirected ?? hostUrl
      const start = offset + filled()
      const end = stop - 1
      const began = Date.now()
      const deadline = new RequestDeadline(options.signal, this.budget, end - start + 1)
      const targetHost = new URL(target).host
      try {
        let res: Dispatcher.ResponseData
        try {
          res = await this.call(target, {
            dispatcher: redirected ? this.transport.dispatcherFor(target) : this.dispatcher(e, target),
            method: 'GET',
            // Authorization and the host's headers never leave the host: object-store redirects carry their own signature.
            headers: { range: `bytes=${start}-${end}`, ...(redirected ? {} : { ...this.hostHeaders(e, options.purpose), ...(await this.authHeaders(e, 'pull')) }) },
            signal: deadline.signal,
          })
        } catch (err) {
          if (deadline.callerAborted) throw new DeadlineError(`${what}: deadline exceeded`)
          if (err instanceof CnaifsError && err.code === 'EUSAGE') throw err
          if (redirected) { this.forgetRedirect(digest); continue }
          await failed(deadline.expired ? deadline.error(what, targetHost) : err)
          continue
        }
        const status = res.statusCode
        if (status >= 300 && status < 400 && header(res.headers, 'location')) {
          await res.body.dump()
          if (++redirectHops > 5) throw new RegistryError(`${what}: more than 5 redirects (last from ${targetHost})`, status)
          this.rememberRedirect(digest, checkRedirect(header(res.headers, 'location') as string, target, what))
          continue
        }
        if (redirected && status >= 400) {
          // The cached redirect expired or was refused: forget it and go back to the host.
          await res.body.dump()
          this.forgetRedirect(digest)
          if ((status === 401 || status === 403) && ++redirectRefusals > 1) {
            throw new AuthError(`${what}: the redirect target ${targetHost} answered HTTP ${status} twice (a pre-signed URL refused, or a host that wants its own credentials: registry credentials are never sent to a redirect target)`, status)
          }
          continue
        }
        if (status === 401) {
          await res.body.dump()
          if (!this.auth.onUnauthorized(e.host, scopeFor(e.repository, 'pull'), res.headers['www-authenticate']) || authAttempts++ >= 1) {
            await failed(new AuthError(`${what}: ${await this.auth.describeMissing(e.host)}`))
          }
          continue
        }
        if (status !== 206 && status !== 200) {
          await res.body.dump()
          const err = status === 404 ? new NotFoundError(`${what}: blob not found in ${e.host}/${e.repository}`)
            : status === 403 ? new AuthError(`${what}: access denied by ${e.host}`, 403)
            : new RegistryError(`${what}: ${status === 429 || status >= 500 ? '' : 'unexpected '}HTTP ${status} from ${e.host}`, status)
          if (ei === endpoints.length - 1 && !(status === 429 || status >= 500)) throw err
          await failed(err, parseRetryAfter(res.headers['retry-after']))
          continue
        }
        const contentRange = header(res.headers, 'content-range')
        // Where the body starts in the blob: a partial reply names it; a 200 without Content-Range is the whole blob.
        let position = 0
        if (status === 206 || contentRange !== undefined) {
          const cr = parseContentRange(contentRange)
          if (!cr || cr.start !== start || cr.end > end) {
            await res.body.dump()
            const err = new RegistryError(`${what}: bad Content-Range ${JSON.stringify(contentRange)} from ${targetHost} for bytes=${start}-${end}`, status)
            if (redirected || ei === endpoints.length - 1) throw err
            await failed(err)
            continue
          }
          position = cr.start
        }
        const keepExtra = status === 200 && contentRange === undefined && options.keepExtra === true
        if (keepExtra) options.onWholeBlob?.()
        const contentLength = Number(header(res.headers, 'content-length') ?? NaN)
        deadline.onHeaders(keepExtra && Number.isFinite(contentLength) ? contentLength : undefined)
        // What this response may pass to the sink: the asked range, or with keepExtra the whole blob.
        const windowStart = keepExtra ? 0 : offset
        const windowEnd = keepExtra ? Number.MAX_SAFE_INTEGER : stop
        const before = filled()
        let received = 0
        try {
          for await (const chunk of res.body as AsyncIterable<Buffer>) {
            received += chunk.length
            const chunkEnd = position + chunk.length
            const from = Math.max(position, windowStart)
            const to = Math.min(chunkEnd, windowEnd)
            for (const [a, b] of passed.missing(from, to)) {
              const pending = sink(slice(chunk, position, a, b), a)
              if (pending) await pending
              passed.add(a, b)
            }
            position = chunkEnd
            if (!keepExtra && filled() >= length) break
          }
        } catch (err) {
          this.report('blob', status, received, began)
          if (deadline.callerAborted) throw new DeadlineError(`${what}: deadline exceeded`)
          if (filled() >= length) return // the asked range arrived; only the extra part was cut
          if (redirected) { this.forgetRedirect(digest); continue }
          if (filled() > before) attempt = 0 // progress was made: a cut body is resumed, not counted as a failure
          await failed(deadline.expired ? deadline.error(what, targetHost, `${received} bytes received in ${(deadline.elapsedMs() / 1000).toFixed(1)} s`) : err)
          continue
        } finally {
          if (!keepExtra && filled() >= length) res.body.destroy()
        }
        this.report('blob', status, received, began)
        if (filled() < length && filled() === before) {
          await failed(new RegistryError(`${what}: empty body from ${targetHost}`, status))
        }
      } finally {
        deadline.clear()
      }
    }
  }

  /** A redirect target learned for a blob; `onRedirect` tells other clients sharing the cache. */
  rememberRedirect(digest: string, url: string, notify = true): void {
    this.redirects.set(digest, url)
    if (notify) this.options.onRedirect?.(digest, url)
  }

  forgetRedirect(digest: string, notify = true): void {
    if (!this.redirects.delete(digest)) return
    if (notify) this.options.onRedirect?.(digest, undefined)
  }

  /** Monolithic upload (POST then PUT ?digest=); skipped when the registry already has the blob. Pushes go to the registry itself. */
  async pushBlob(ref: ImageReference, digest: string, size: number, body: Buffer | (() => Readable)): Promise<'exists' | 'uploaded'> {
    const base = { ref, op: 'push' as const, scope: 'pull,push' as const, kind: 'upload' as const }
    const exists = await this.exchange({
      ...base, method: 'HEAD', path: `blobs/${digest}`, accept: [200, 404], what: `blob ${digest}`,
      consume: async (res) => { await res.body.dump(); return res.statusCode === 200 },
    })
    if (exists) return 'exists'
    const location = await this.exchange({
      ...base, method: 'POST', path: 'blobs/uploads/', accept: [202], what: `upload of ${digest}`, headers: { 'content-length': '0' },
      consume: async (res, _d, e) => {
        await res.body.dump()
        const loc = header(res.headers, 'location')
        if (!loc) throw new RegistryError(`upload of ${digest}: registry sent no Location`, res.statusCode)
        return new URL(loc, `${e.origin}${e.apiPath}/${e.repository}/`)
      },
    })
    location.searchParams.set('digest', digest)
    await this.exchange({
      ...base, method: 'PUT', path: '', url: location.toString(),
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
      body, bytes: size, accept: [201], what: `upload of ${digest}`,
      consume: async (res) => { await res.body.dump() },
    })
    return 'uploaded'
  }

  async putManifest(ref: ImageReference, tagOrDigest: string, bytes: Buffer, mediaType: string): Promise<string> {
    await this.exchange({
      ref, op: 'push', scope: 'pull,push', kind: 'upload', method: 'PUT', path: `manifests/${tagOrDigest}`,
      headers: { 'content-type': mediaType }, body: bytes, bytes: bytes.length, accept: [201], what: `manifest ${formatReference(ref)}`,
      consume: async (res) => { await res.body.dump() },
    })
    return sha256Digest(bytes)
  }

  private async authHeaders(e: RegistryEndpoint, scope: 'pull' | 'pull,push'): Promise<Record<string, string>> {
    const value = await this.auth.authorization(e.host, scopeFor(e.repository, scope))
    return value ? { authorization: value } : {}
  }

  /** Leaves a host for the next one; a host that could not be reached is passed over for a while. */
  private fallOver(e: RegistryEndpoint, err: unknown, what: string): void {
    const unreachable = err instanceof DeadlineError || err instanceof UnreachableError || isTransientNetworkError(err)
    if (unreachable) this.cooling.set(e.origin, Date.now() + COOLDOWN_MS)
    this.log.info({ what, host: e.host, source: e.source, error: errorMessage(err) }, 'registry host failed: trying the next one')
  }

  /**
   * One request at the hosts of its operation, in order, with auth and retries; `consume` reads the response. At
   * a mirror anything but a 2xx (a connection error, a timeout, 404, 5xx…) falls over to the next host; the last
   * host's answer is final, after the retries that 429, 5xx and dropped connections get.
   */
  private async exchange<T>(o: ExchangeOptions<T>): Promise<T> {
    const endpoints = this.endpointsFor(o.ref, o.op)
    for (let i = 0; i < endpoints.length; i++) {
      const e = endpoints[i]!
      const last = i === endpoints.length - 1
      let attempt = 0
      let authAttempts = 0
      const url = o.url ?? this.urlFor(e, o.path)
      const host = new URL(url).host
      /** Retries at this host (returns true) or falls over (false); throws when nothing is left. */
      const failed = async (err: unknown, retryable: boolean, retryAfterMs?: number): Promise<boolean> => {
        if (!last) { this.fallOver(e, err, o.what); return false }
        if (!retryable || (err instanceof DeadlineError && !o.signal)) throw err
        attempt = await this.retryOrThrow(attempt, err, o.what, o.signal, retryAfterMs)
        return true
      }
      for (;;) {
        const deadline = new RequestDeadline(o.signal, this.budget, o.bytes ?? 0)
        const began = Date.now()
        try {
          let res: Dispatcher.ResponseData
          try {
            res = await this.call(url, {
              dispatcher: this.dispatcher(e, url),
              method: o.method,
              headers: { ...e.headers, ...o.headers, ...(await this.authHeaders(e, o.scope)) },
              body: typeof o.body === 'function' ? o.body() : o.body,
              signal: deadline.signal,
            })
          } catch (err) {
            if (err instanceof CnaifsError && !(err instanceof UnreachableError) && !(err instanceof DeadlineError)) throw err
            if (deadline.callerAborted) throw new DeadlineError(`${o.what}: deadline exceeded`)
            const cause = deadline.expired ? deadline.error(o.what, host) : err
            if (await failed(cause, typeof o.body !== 'function')) continue
            break
          }
          deadline.onHeaders()
          this.report(o.kind, res.statusCode, 0, began)
          const status = res.statusCode
          if (o.accept.includes(status) && (last || (status >= 200 && status < 300))) {
            try {
              return await o.consume(res, deadline, e)
            } catch (err) {
              if (deadline.callerAborted) throw new DeadlineError(`${o.what}: deadline exceeded`)
              if (deadline.expired) {
                if (await failed(deadline.error(o.what, host), true)) continue
                break
              }
              if (err instanceof CnaifsError) {
                if (last) throw err
                this.fallOver(e, err, o.what)
                break
              }
              if (await failed(err, isTransientNetworkError(err))) continue
              break
            }
          }
          const text = await res.body.text().catch(() => '')
          if (status === 401) {
            if (this.auth.onUnauthorized(e.host, scopeFor(e.repository, o.scope), res.headers['www-authenticate']) && authAttempts++ < 1) continue
            const err = new AuthError(`${o.what}: ${await this.auth.describeMissing(e.host)}`)
            if (await failed(err, false)) continue
            break
          }
          const err = status === 403 ? new AuthError(`${o.what}: access denied by ${e.host} (HTTP 403)`, 403)
            : status === 404 ? new NotFoundError(`${o.what}: not found in ${e.host}/${e.repository}${registryErrorDetail(text)}`)
            : new RegistryError(`${o.what}: HTTP ${status} from ${e.host}${registryErrorDetail(text)}`, status)
          const retryable = (status === 429 || status >= 500) && typeof o.body !== 'function'
          if (await failed(err, retryable, parseRetryAfter(res.headers['retry-after']))) continue
          break
        } finally {
          deadline.clear()
        }
      }
    }
    // Unreachable: the last host either returns or throws.
    throw new RegistryError(`${o.what}: no host answered`, 0)
  }

  /** Sleeps before the next attempt, or throws when the attempts are used up. Returns the next attempt number. */
  private async retryOrThrow(attempt: number, err: unknown, what: string, signal?: AbortSignal, retryAfterMs?: number): Promise<number> {
    const retryable = err instanceof RegistryError ? err.status === 429 || err.status >= 500
      : err instanceof DeadlineError ? signal !== undefined
      : isTransientNetworkError(err)
    if (!retryable) throw err instanceof CnaifsError ? err : new UnreachableError(`${what}: ${errorMessage(err)}`, { cause: err })
    if (attempt >= this.retries) {
      if (err instanceof CnaifsError) throw err
      throw new UnreachableError(`${what}: registry unreachable after ${attempt + 1} attempts: ${errorMessage(err)}`, { cause: err })
    }
    const wait = retryAfterMs ?? backoffMs(attempt)
    this.log.debug({ what, attempt: attempt + 1, waitMs: wait, error: errorMessage(err) }, 'retrying registry request')
    await sleepWithin(wait, signal, what)
    return attempt + 1
  }

  private report(kind: 'manifest' | 'blob' | 'upload', status: number, bytes: number, began: number): void {
    this.options.observer?.onResponse?.({ kind, status, bytes, durationMs: Date.now() - began })
  }
}

/** A redirect's target, refused with its own message unless it is http(s): file:, data: and others never load. */
function checkRedirect(location: string, from: string, what: string): string {
  let url: URL
  try {
    url = new URL(location, from)
  } catch {
    throw new RegistryError(`${what}: ${new URL(from).host} redirected to something that is not a URL`, 0, 'EREDIRECT')
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new RegistryError(`${what}: ${new URL(from).host} redirected to a ${url.protocol} URL, which is refused (only http and https are followed)`, 0, 'EREDIRECT')
  }
  return url.toString()
}

/** A few disjoint half-open intervals, merged as they are added (a read's delivered bytes: one or two). */
class IntervalSet {
  private spans: Array<[number, number]> = []

  add(from: number, to: number): void {
    if (to <= from) return
    const out: Array<[number, number]> = []
    for (const [a, b] of this.spans) {
      if (b < from || a > to) out.push([a, b])
      else { from = Math.min(from, a); to = Math.max(to, b) }
    }
    out.push([from, to])
    this.spans = out.sort((x, y) => x[0] - y[0])
  }

  /** The parts of [from, to) not covered, in order. */
  missing(from: number, to: number): Array<[number, number]> {
    const out: Array<[number, number]> = []
    let at = from
    for (const [a, b] of this.spans) {
      if (b <= at || a >= to) continue
      if (a > at) out.push([at, a])
      at = Math.max(at, b)
    }
    if (at < to) out.push([at, to])
    return out
  }

  /** The end of the covered run that starts at `from` (`from` itself if it is not covered), at most `limit`. */
  coveredFrom(from: number, limit: number): number {
    for (const [a, b] of this.spans) if (a <= from && b > from) return Math.min(b, limit)
    return from
  }
}

/** Bytes [from, to) of the blob out of `chunk`, which starts at blob position `position`; no copy. */
function slice(chunk: Buffer, position: number, from: number, to: number): Buffer {
  return from === position && to === position + chunk.length ? chunk : chunk.subarray(from - position, to - position)
}

function scopeFor(repository: string, actions: string): string {
  return `repository:${repository}:${actions}`
}

function header(headers: Dispatcher.ResponseData['headers'], name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}

function parseContentRange(value: string | undefined): { start: number; end: number } | undefined {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value ?? '')
  if (!m) return undefined
  return { start: Number(m[1]), end: Number(m[2]) }
}

/** Distribution's JSON error body: `{"errors":[{"code","message"}]}`, shown in messages for context. */
function registryErrorDetail(text: string): string {
  try {
    const body = JSON.parse(text) as { errors?: { code?: string; message?: string }[] }
    const first = body.errors?.[0]
    if (first) return ` (${[first.code, first.message].filter(Boolean).join(': ')})`
  } catch {
    // not JSON: nothing to add
  }
  return ''
}

async function readLimited(body: Dispatcher.ResponseData['body'], limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = []
  let total = 0
  for await (const chunk of body as AsyncIterable<Buffer>) {
    total += chunk.length
    if (total > limit) {
      body.destroy()
      throw new RegistryError(`${what}: larger than ${limit} bytes`, 200)
    }
    chunks.push(chunk)
  }
  return Buffer.concat(chunks)
}
