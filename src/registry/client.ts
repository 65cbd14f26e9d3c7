import { readFileSync } from 'node:fs'
import type { Readable } from 'node:stream'
import { Agent, request, type Dispatcher } from 'undici'
import { sha256Digest } from '../util/digest.js'
import { DigestMismatchError, errorMessage } from '../util/errors.js'
import { silentLogger, type Logger } from '../util/log.js'
import { Authenticator } from './auth.js'
import { FileCredentialStore, type CredentialStore, type CredentialStoreOptions } from './credentials.js'
import { AuthError, DeadlineError, NotFoundError, RegistryError, UnreachableError } from './errors.js'
import { MANIFEST_ACCEPT } from './media-types.js'
import { formatReference, manifestSelector, type ImageReference } from './reference.js'
import { backoffMs, isTransientNetworkError, parseRetryAfter, sleepWithin } from './retry.js'

/**
 * The plain-data part of a client's options: a worker thread given the same config builds a client that
 * talks to the same hosts with the same credentials (see cache/fetch-worker.ts).
 */
export interface RegistryClientConfig {
  /** Where credentials come from (--username/--password-stdin, auth files); default: Docker's and podman's files. */
  credentialSource?: CredentialStoreOptions
  /** Talk HTTP instead of HTTPS. Undefined means: HTTP for loopback hosts only (as Docker does), HTTPS otherwise. */
  plainHttp?: boolean
  /** Skip TLS certificate verification. */
  insecure?: boolean
  /** PEM bundle of a private CA, in addition to the system's. */
  caFile?: string
  /** Time allowed for response headers and between body chunks of one request. */
  requestTimeoutMs?: number
  /** Attempts after the first for retryable failures (429, 5xx, dropped connections). */
  retries?: number
  /** Connections per origin: parallel ranged GETs need several. */
  connections?: number
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
}

export interface StreamOptions extends ReadOptions {
  /**
   * When the server ignores Range and sends the whole blob, pass every byte of it to the sink (blob
   * positions outside the asked range included) instead of hanging up once the range has arrived.
   */
  keepExtra?: boolean
}

/** Receives blob bytes at their blob position; a returned Promise holds the stream back until it settles. */
export type RangeSink = (chunk: Buffer, position: number) => void | Promise<void>

const MAX_MANIFEST_BYTES = 4 * 1024 * 1024
const MAX_SMALL_BLOB_BYTES = 16 * 1024 * 1024

function isLoopback(host: string): boolean {
  const h = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '')
  return h === 'localhost' || h === '::1' || /^127\./.test(h)
}

interface SendOptions {
  ref: ImageReference
  scope: 'pull' | 'pull,push'
  kind: 'manifest' | 'blob' | 'upload'
  method: Dispatcher.HttpMethod
  url: string
  headers?: Record<string, string>
  body?: Buffer | string | (() => Readable)
  signal?: AbortSignal
  /** Statuses returned to the caller as-is (others are retried or turned into errors). */
  accept: number[]
  what: string
}

/**
 * An OCI distribution client: manifests, blob HEAD and ranged GETs, and pushes, over one keep-alive undici
 * Agent, with auth, retries that honour Retry-After, resumable bodies and per-blob redirect caching.
 */
export class RegistryClient {
  readonly dispatcher: Agent
  private readonly auth: Authenticator
  private readonly log: Logger
  private readonly retries: number
  private readonly redirects = new Map<string, string>()
  private readonly options: RegistryClientOptions

  constructor(options: RegistryClientOptions) {
    this.options = { ...options }
    this.log = options.log ?? silentLogger()
    this.retries = options.retries ?? 4
    const timeout = options.requestTimeoutMs ?? 30_000
    this.dispatcher = new Agent({
      connections: options.connections ?? 32,
      keepAliveTimeout: 30_000,
      headersTimeout: timeout,
      bodyTimeout: timeout,
      connect: {
        timeout: Math.min(timeout, 10_000),
        rejectUnauthorized: !options.insecure,
        ...(options.caFile ? { ca: readFileSync(options.caFile) } : {}),
      },
    })
    const credentials = options.credentials ?? new FileCredentialStore(options.credentialSource)
    this.auth = new Authenticator(credentials, this.dispatcher, this.log, (status) =>
      this.options.observer?.onResponse?.({ kind: 'token', status, bytes: 0, durationMs: 0 }))
  }

  /** The plain-data options this client was built from (for clients in worker threads). */
  get config(): RegistryClientConfig {
    const { credentialSource, plainHttp, insecure, caFile, requestTimeoutMs, retries, connections } = this.options
    return { credentialSource, plainHttp, insecure, caFile, requestTimeoutMs, retries, connections }
  }

  async close(): Promise<void> {
    await this.dispatcher.close()
  }

  /** Replaces the metrics hooks (the daemon creates its metrics after the client). */
  setObserver(observer: RegistryObserver | undefined): void {
    this.options.observer = observer
  }

  baseUrl(ref: ImageReference): string {
    const plain = this.options.plainHttp ?? isLoopback(ref.registry)
    return `${plain ? 'http' : 'https'}://${ref.registry}/v2/${ref.repository}`
  }

  /** GET a manifest or index; verifies its bytes against the pinned digest, or records the digest it has. */
  async getManifest(ref: ImageReference, selector: string = manifestSelector(ref), options: ReadOptions = {}): Promise<FetchedManifest> {
    const what = `manifest ${formatReference({ ...ref, tag: selector.startsWith('sha256:') ? undefined : selector, digest: selector.startsWith('sha256:') ? selector : undefined })}`
    const res = await this.send({
      ref, scope: 'pull', kind: 'manifest', method: 'GET', url: `${this.baseUrl(ref)}/manifests/${selector}`,
      headers: { accept: MANIFEST_ACCEPT }, accept: [200], what, signal: options.signal,
    })
    const bytes = await readLimited(res.body, MAX_MANIFEST_BYTES, what)
    const digest = sha256Digest(bytes)
    if (selector.startsWith('sha256:') && digest !== selector) throw new DigestMismatchError(what, selector, digest)
    const headerDigest = header(res.headers, 'docker-content-digest')
    if (headerDigest && headerDigest.startsWith('sha256:') && headerDigest !== digest) {
      throw new DigestMismatchError(`${what} (Docker-Content-Digest)`, headerDigest, digest)
    }
    const mediaType = (header(res.headers, 'content-type') ?? '').split(';')[0].trim()
    return { digest, mediaType, bytes }
  }

  async headBlob(ref: ImageReference, digest: string, options: ReadOptions = {}): Promise<BlobInfo | undefined> {
    const res = await this.send({
      ref, scope: 'pull', kind: 'blob', method: 'HEAD', url: `${this.baseUrl(ref)}/blobs/${digest}`,
      accept: [200, 404], what: `blob ${digest}`, signal: options.signal,
    })
    await res.body.dump()
    if (res.statusCode === 404) return undefined
    return { size: Number(header(res.headers, 'content-length') ?? '0') }
  }

  /** A whole small blob (a config), verified against its digest. */
  async getBlob(ref: ImageReference, digest: string, options: ReadOptions = {}): Promise<Buffer> {
    const what = `blob ${digest} of ${ref.repository}`
    const res = await this.send({
      ref, scope: 'pull', kind: 'blob', method: 'GET', url: `${this.baseUrl(ref)}/blobs/${digest}`,
      accept: [200], what, signal: options.signal,
    })
    const bytes = await readLimited(res.body, MAX_SMALL_BLOB_BYTES, what)
    const actual = sha256Digest(bytes)
    if (actual !== digest) throw new DigestMismatchError(what, digest, actual)
    return bytes
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
   * Resolves once the response is consumed; the sink may return a Promise to hold the stream back.
   */
  async streamBlobRange(ref: ImageReference, digest: string, offset: number, length: number, sink: RangeSink, options: StreamOptions = {}): Promise<void> {
    if (length === 0) return
    const stop = offset + length
    // Blob bytes already passed to the sink, so a resumed or repeated whole-blob response never passes a byte
    // twice; `filled` is how much of the asked range they cover from its start (what a resume skips).
    const passed = new IntervalSet()
    const filled = (): number => passed.coveredFrom(offset, stop) - offset
    let attempt = 0
    const what = `blob ${digest.slice(0, 19)} range ${offset}+${length}`
    const registryUrl = `${this.baseUrl(ref)}/blobs/${digest}`
    const registryOrigin = new URL(registryUrl).origin
    let redirectHops = 0
    while (filled() < length) {
      if (options.signal?.aborted) throw new DeadlineError(`${what}: deadline exceeded`)
      const target = this.redirects.get(digest) ?? registryUrl
      const sameOrigin = new URL(target).origin === registryOrigin
      const start = offset + filled()
      const end = stop - 1
      const began = Date.now()
      let res: Dispatcher.ResponseData
      try {
        res = await request(target, {
          dispatcher: this.dispatcher,
          method: 'GET',
          // Authorization never leaves the registry's origin: object-store redirects carry their own signature.
          headers: { range: `bytes=${start}-${end}`, ...(sameOrigin ? await this.authHeaders(ref, 'pull') : {}) },
          signal: options.signal,
        })
      } catch (err) {
        if (options.signal?.aborted) throw new DeadlineError(`${what}: deadline exceeded`)
        if (target !== registryUrl) { this.forgetRedirect(digest); continue }
        attempt = await this.retryOrThrow(attempt, err, what, options.signal)
        continue
      }
      const status = res.statusCode
      if (status >= 300 && status < 400 && header(res.headers, 'location')) {
        await res.body.dump()
        if (++redirectHops > 5) throw new RegistryError(`${what}: too many redirects`, status)
        this.rememberRedirect(digest, new URL(header(res.headers, 'location') as string, target).toString())
        continue
      }
      if (status === 401 && sameOrigin) {
        await res.body.dump()
        if (!this.auth.onUnauthorized(ref.registry, scopeFor(ref, 'pull'), res.headers['www-authenticate']) || attempt++ > 1) {
          throw new AuthError(`${what}: ${await this.auth.describeMissing(ref.registry)}`)
        }
        continue
      }
      if (target !== registryUrl && status >= 400) {
        // The cached redirect expired or was refused: forget it and go back to the registry.
        await res.body.dump()
        this.forgetRedirect(digest)
        continue
      }
      if (status !== 206 && status !== 200) {
        await res.body.dump()
        if (status === 404) throw new NotFoundError(`${what}: blob not found in ${ref.registry}/${ref.repository}`)
        if (status === 403) throw new AuthError(`${what}: access denied by ${ref.registry}`, 403)
        if (status === 429 || status >= 500) {
          attempt = await this.retryOrThrow(attempt, new RegistryError(`${what}: HTTP ${status}`, status), what, options.signal, parseRetryAfter(res.headers['retry-after']))
          continue
        }
        throw new RegistryError(`${what}: unexpected HTTP ${status}`, status)
      }
      const contentRange = header(res.headers, 'content-range')
      // Where the body starts in the blob: a partial reply names it; a 200 without Content-Range is the whole blob.
      let position = 0
      if (status === 206 || contentRange !== undefined) {
        const cr = parseContentRange(contentRange)
        if (!cr || cr.start !== start || cr.end > end) {
          await res.body.dump()
          throw new RegistryError(`${what}: bad Content-Range ${JSON.stringify(contentRange)} for bytes=${start}-${end}`, status)
        }
        position = cr.start
      }
      const keepExtra = status === 200 && contentRange === undefined && options.keepExtra === true
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
        if (options.signal?.aborted) throw new DeadlineError(`${what}: deadline exceeded`)
        if (filled() >= length) return // the asked range arrived; only the extra part was cut
        if (filled() > before) attempt = 0 // progress was made: a cut body is resumed, not counted as a failure
        attempt = await this.retryOrThrow(attempt, err, what, options.signal)
        continue
      } finally {
        if (!keepExtra && filled() >= length) res.body.destroy()
      }
      this.report('blob', status, received, began)
      if (filled() < length && filled() === before) {
        attempt = await this.retryOrThrow(attempt, new RegistryError(`${what}: empty body`, status), what, options.signal)
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

  /** Monolithic upload (POST then PUT ?digest=); skipped when the registry already has the blob. */
  async pushBlob(ref: ImageReference, digest: string, size: number, body: Buffer | (() => Readable)): Promise<'exists' | 'uploaded'> {
    const head = await this.send({
      ref, scope: 'pull,push', kind: 'upload', method: 'HEAD', url: `${this.baseUrl(ref)}/blobs/${digest}`,
      accept: [200, 404], what: `blob ${digest}`,
    })
    await head.body.dump()
    if (head.statusCode === 200) return 'exists'
    const start = await this.send({
      ref, scope: 'pull,push', kind: 'upload', method: 'POST', url: `${this.baseUrl(ref)}/blobs/uploads/`,
      accept: [202], what: `upload of ${digest}`, headers: { 'content-length': '0' },
    })
    await start.body.dump()
    const location = header(start.headers, 'location')
    if (!location) throw new RegistryError(`upload of ${digest}: registry sent no Location`, start.statusCode)
    const url = new URL(location, this.baseUrl(ref))
    url.searchParams.set('digest', digest)
    const put = await this.send({
      ref, scope: 'pull,push', kind: 'upload', method: 'PUT', url: url.toString(),
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
      body, accept: [201], what: `upload of ${digest}`,
    })
    await put.body.dump()
    return 'uploaded'
  }

  async putManifest(ref: ImageReference, tagOrDigest: string, bytes: Buffer, mediaType: string): Promise<string> {
    const res = await this.send({
      ref, scope: 'pull,push', kind: 'upload', method: 'PUT', url: `${this.baseUrl(ref)}/manifests/${tagOrDigest}`,
      headers: { 'content-type': mediaType }, body: bytes, accept: [201], what: `manifest ${formatReference(ref)}`,
    })
    await res.body.dump()
    return sha256Digest(bytes)
  }

  private async authHeaders(ref: ImageReference, scope: 'pull' | 'pull,push'): Promise<Record<string, string>> {
    const value = await this.auth.authorization(ref.registry, scopeFor(ref, scope))
    return value ? { authorization: value } : {}
  }

  /** One request with auth and retries; returns when the status is one of `accept`. */
  private async send(o: SendOptions): Promise<Dispatcher.ResponseData> {
    let attempt = 0
    let authAttempts = 0
    for (;;) {
      const began = Date.now()
      let res: Dispatcher.ResponseData
      try {
        res = await request(o.url, {
          dispatcher: this.dispatcher,
          method: o.method,
          headers: { ...o.headers, ...(await this.authHeaders(o.ref, o.scope)) },
          body: typeof o.body === 'function' ? o.body() : o.body,
          signal: o.signal,
        })
      } catch (err) {
        if (err instanceof AuthError || err instanceof RegistryError) throw err
        if (o.signal?.aborted) throw new DeadlineError(`${o.what}: deadline exceeded`)
        attempt = await this.retryOrThrow(attempt, err, o.what, o.signal)
        continue
      }
      this.report(o.kind, res.statusCode, 0, began)
      if (o.accept.includes(res.statusCode)) return res
      const text = await res.body.text().catch(() => '')
      if (res.statusCode === 401) {
        if (!this.auth.onUnauthorized(o.ref.registry, scopeFor(o.ref, o.scope), res.headers['www-authenticate']) || authAttempts++ >= 1) {
          throw new AuthError(`${o.what}: ${await this.auth.describeMissing(o.ref.registry)}`)
        }
        continue
      }
      if (res.statusCode === 403) throw new AuthError(`${o.what}: access denied by ${o.ref.registry} (HTTP 403)`, 403)
      if (res.statusCode === 404) throw new NotFoundError(`${o.what}: not found in ${o.ref.registry}/${o.ref.repository}${registryErrorDetail(text)}`)
      if ((res.statusCode === 429 || res.statusCode >= 500) && typeof o.body !== 'function') {
        attempt = await this.retryOrThrow(attempt, new RegistryError(`${o.what}: HTTP ${res.statusCode}`, res.statusCode), o.what, o.signal, parseRetryAfter(res.headers['retry-after']))
        continue
      }
      throw new RegistryError(`${o.what}: HTTP ${res.statusCode}${registryErrorDetail(text)}`, res.statusCode)
    }
  }

  /** Sleeps before the next attempt, or throws when the attempts are used up. Returns the next attempt number. */
  private async retryOrThrow(attempt: number, err: unknown, what: string, signal?: AbortSignal, retryAfterMs?: number): Promise<number> {
    const retryable = err instanceof RegistryError ? err.status === 429 || err.status >= 500 : isTransientNetworkError(err)
    if (!retryable) throw err instanceof RegistryError ? err : new UnreachableError(`${what}: ${errorMessage(err)}`, { cause: err })
    if (attempt >= this.retries) {
      if (err instanceof RegistryError) throw err
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

function scopeFor(ref: ImageReference, actions: string): string {
  return `repository:${ref.repository}:${actions}`
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
