/**
 * A fault-injecting HTTP reverse proxy that sits between cnaifs and a test registry.
 *
 * It forwards requests (method, path, headers with Host rewritten, streamed bodies both ways), logs
 * every request, and can inject latency, bandwidth limits, cut-off bodies, corrupted bodies, error
 * statuses with Retry-After, connection resets and black holes. Faults can be changed at any time
 * with set(); they apply to requests that arrive (or bytes that are sent) afterwards.
 */
import http from 'node:http'
import { setMaxListeners } from 'node:events'
import type net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

export interface ProxyRequestLog {
  method: string
  /** Request target as sent by the client (path plus query string). */
  path: string
  range?: string
  /** Response status sent to the client; 0 while pending or if no response was ever sent (down, blackhole). */
  status: number
  /** Response body bytes sent to the client (after corruption/cutting). */
  bytes: number
  /** Path matches /v2/.+/blobs/sha256:<64 hex> */
  isBlob: boolean
  /** Request headers as received (lower-case names). */
  headers: http.IncomingHttpHeaders
}

export interface Faults {
  /** Added before forwarding each request. */
  latencyMs: number
  /** Cap on response body bytes per second, shared by all connections; 0 = unlimited. */
  bandwidthBytesPerSec: number
  /** For blob GETs: destroy the client socket after sending this many body bytes; 0 = off. */
  resetAfterBytes: number
  /** How many blob responses to cut that way (then back to normal); Infinity allowed. Default Infinity. */
  resetCount: number
  /** Flip bytes in blob GET bodies, keeping the length (see corrupt() for which bytes). */
  corruptBlobBodies: boolean
  /** Answer every request (and new connection) by resetting the connection (TCP RST). */
  down: boolean
  /** Accept requests and never answer (to test timeouts). */
  blackhole: boolean
  /** If non-zero, answer blob GETs with this status (e.g. 503 or 429) ... */
  failStatus: number
  /** ... this many times, then normal. Infinity allowed. Default Infinity. */
  failCount: number
  /** Retry-After header value sent with failStatus, if > 0. */
  retryAfterSeconds: number
  /** Drop the Range header of blob GETs, so the registry sends the whole blob with a 200 (a pull-through cache's way). */
  ignoreRange: boolean
}

export interface FaultProxy {
  url: string
  /** 127.0.0.1:PORT */
  host: string
  /** Every request in arrival order; entries are updated in place as responses progress. */
  log: ProxyRequestLog[]
  /** GET requests to blob paths (the ones that transfer blob data; HEADs are excluded). */
  blobRequests(): ProxyRequestLog[]
  /** Sum of body bytes sent for blob GETs. */
  blobBytes(): number
  /** Clears the log (the same array object is kept, so references to `log` stay valid). */
  reset(): void
  /** Merges the given faults into the current ones. */
  set(faults: Partial<Faults>): void
  stop(): Promise<void>
}

export const DEFAULT_FAULTS: Readonly<Faults> = Object.freeze({
  latencyMs: 0,
  bandwidthBytesPerSec: 0,
  resetAfterBytes: 0,
  resetCount: Infinity,
  corruptBlobBodies: false,
  down: false,
  blackhole: false,
  failStatus: 0,
  failCount: Infinity,
  retryAfterSeconds: 0,
  ignoreRange: false,
})

const BLOB_PATH = /^\/v2\/.+\/blobs\/sha256:[a-f0-9]{64}$/

// RFC 7230 hop-by-hop headers: they describe one connection and must not be forwarded. Node recomputes
// framing (content-length / chunked) itself from what we write.
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
])

function hopByHop(connectionHeader: string | string[] | undefined): Set<string> {
  const extra = [connectionHeader ?? []].flat().flatMap((v) => v.split(','))
  return new Set([...HOP_BY_HOP, ...extra.map((v) => v.trim().toLowerCase()).filter(Boolean)])
}

/**
 * Returns a corrupted copy of a body chunk: every byte whose offset within the response body is a
 * multiple of 4096 is inverted. Byte 0 of every non-empty body is always hit, so any response
 * (including small range reads) differs from the original, and the length is unchanged.
 */
function corrupt(chunk: Buffer, bodyOffset: number): Buffer {
  const out = Buffer.from(chunk)
  const first = (4096 - (bodyOffset % 4096)) % 4096
  for (let i = first; i < out.length; i += 4096) out[i] = out[i]! ^ 0xff
  return out
}

/**
 * Shared rate limiter (a token bucket with no burst allowance). Every piece of body data reserves
 * the "link" for size/rate seconds in FIFO order across all connections, and is sent when its slot
 * ends; so N bytes never arrive faster than N/rate seconds (a lower bound tests can rely on).
 */
class SharedRateLimiter {
  private nextFree = 0

  /** Milliseconds to wait before `n` bytes may be sent at `rate` bytes/s. */
  reserve(n: number, rate: number): number {
    const now = performance.now()
    const start = Math.max(now, this.nextFree)
    this.nextFree = start + (n / rate) * 1000
    return this.nextFree - now
  }
}

class ClientGoneError extends Error {}

/** res.write with backpressure; rejects if the client goes away while we wait for 'drain'. */
function write(res: http.ServerResponse, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    if (res.destroyed) return reject(new ClientGoneError())
    if (res.write(chunk)) return resolve()
    const done = (err?: Error): void => {
      res.off('drain', onDrain)
      res.off('close', onClose)
      if (err) reject(err)
      else resolve()
    }
    const onDrain = (): void => done()
    const onClose = (): void => done(new ClientGoneError())
    res.on('drain', onDrain)
    res.on('close', onClose)
  })
}

export async function startProxy(target: string, faults: Partial<Faults> = {}): Promise<FaultProxy> {
  const targetUrl = new URL(target)
  if (targetUrl.protocol !== 'http:') throw new Error(`proxy target must be plain http, got ${target}`)
  const targetOrigin = targetUrl.origin // e.g. http://127.0.0.1:5000, no trailing slash

  const current: Faults = { ...DEFAULT_FAULTS }
  const applyFaults = (f: Partial<Faults>): void => {
    for (const [k, v] of Object.entries(f)) {
      if (typeof v === 'number' && !(v >= 0)) throw new Error(`fault ${k} must be a non-negative number, got ${v}`)
    }
    Object.assign(current, f)
  }
  applyFaults(faults)

  const log: ProxyRequestLog[] = []
  const limiter = new SharedRateLimiter()
  const stopController = new AbortController()
  // Every request forwarded at once listens on it (the 64-reader tests): many listeners by design.
  setMaxListeners(0, stopController.signal)
  const sockets = new Set<net.Socket>()
  // Upstream keep-alive, like a real client would do; destroyed on stop.
  const agent = new http.Agent({ keepAlive: true })
  let proxyOrigin = ''

  const server = http.createServer()
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    // Swallow ECONNRESET etc. on client sockets; they are expected in fault tests.
    socket.on('error', () => {})
    if (current.down) socket.resetAndDestroy()
  })

  const sendBody = async (res: http.ServerResponse, entry: ProxyRequestLog, chunk: Buffer): Promise<void> => {
    let offset = 0
    while (offset < chunk.length) {
      const rate = current.bandwidthBytesPerSec
      // Small pieces (~20 ms worth) keep throttled output smooth and fair between connections.
      const size = rate > 0 ? Math.max(1, Math.min(64 * 1024, Math.floor(rate / 50))) : chunk.length
      const piece = chunk.subarray(offset, offset + size)
      if (rate > 0) {
        const wait = limiter.reserve(piece.length, rate)
        if (wait > 0) await sleep(wait, undefined, { signal: stopController.signal })
      }
      await write(res, piece)
      entry.bytes += piece.length
      offset += piece.length
    }
  }

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const method = req.method ?? 'GET'
    const path = req.url ?? '/'
    const pathname = path.split('?')[0]!
    const isBlob = BLOB_PATH.test(pathname)
    const isBlobGet = isBlob && method === 'GET'
    const entry: ProxyRequestLog = { method, path, status: 0, bytes: 0, isBlob, headers: { ...req.headers } }
    if (typeof req.headers.range === 'string') entry.range = req.headers.range
    log.push(entry)

    if (current.down) {
      req.socket.resetAndDestroy()
      return
    }
    if (current.blackhole) return // never answered; the socket is destroyed on stop()

    if (current.latencyMs > 0) await sleep(current.latencyMs, undefined, { signal: stopController.signal })

    if (isBlobGet && current.failStatus > 0 && current.failCount > 0) {
      current.failCount-- // Infinity stays Infinity
      const status = current.failStatus
      const code = status === 429 ? 'TOOMANYREQUESTS' : 'UNAVAILABLE'
      const body = JSON.stringify({ errors: [{ code, message: `injected by cnaifs test proxy (${status})` }] })
      const headers: http.OutgoingHttpHeaders = {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
      }
      if (current.retryAfterSeconds > 0) headers['retry-after'] = String(current.retryAfterSeconds)
      req.resume()
      res.writeHead(status, headers)
      entry.status = status
      entry.bytes = Buffer.byteLength(body)
      res.end(body)
      return
    }

    // Forward the request.
    const drop = hopByHop(req.headers.connection)
    const headers: http.OutgoingHttpHeaders = {}
    for (const [k, v] of Object.entries(req.headers)) if (!drop.has(k) && v !== undefined) headers[k] = v
    headers.host = targetUrl.host
    if (isBlobGet && current.ignoreRange) delete headers.range

    // Requests without a body can be replayed: Node's recommended remedy for the race where a pooled
    // keep-alive connection is closed by the registry (idle close, restart()) just as we reuse it.
    const replayable =
      (method === 'GET' || method === 'HEAD') && !req.headers['content-length'] && !req.headers['transfer-encoding']
    // If the client disappears (e.g. its own timeout), stop talking to the registry too.
    let inFlight: http.ClientRequest | undefined
    res.on('close', () => {
      if (!res.writableFinished) inFlight?.destroy()
    })
    const send = (): Promise<{ upstreamReq: http.ClientRequest; upstreamRes: http.IncomingMessage }> => {
      const upstreamReq = (inFlight = http.request({
        protocol: 'http:',
        hostname: targetUrl.hostname,
        port: targetUrl.port,
        method,
        path,
        headers,
        agent,
        signal: stopController.signal,
      }))
      if (replayable) {
        req.resume()
        upstreamReq.end()
      } else {
        req.on('error', () => upstreamReq.destroy())
        req.pipe(upstreamReq)
      }
      return new Promise((resolve, reject) => {
        upstreamReq.once('response', (upstreamRes) => resolve({ upstreamReq, upstreamRes }))
        upstreamReq.once('error', (err: NodeJS.ErrnoException) => {
          if (replayable && upstreamReq.reusedSocket && err.code === 'ECONNRESET' && !res.destroyed) {
            resolve(send())
          } else reject(err)
        })
      })
    }

    let sent: Awaited<ReturnType<typeof send>>
    try {
      sent = await send()
    } catch (err) {
      if (!res.headersSent && !res.destroyed) {
        // Registry unreachable (stopped, restarting): answer like a real gateway would.
        const body = JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: `proxy upstream error: ${(err as Error).message}` }] })
        res.writeHead(502, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
        entry.status = 502
        entry.bytes = Buffer.byteLength(body)
        res.end(body)
      }
      return
    }
    const { upstreamReq, upstreamRes } = sent
    upstreamReq.on('error', () => {}) // later errors surface through upstreamRes iteration

    // Response headers: keep raw order/duplicates, drop hop-by-hop, point Location back at us so
    // that blob upload sessions (absolute Location URLs) keep flowing through the proxy.
    const dropRes = hopByHop(upstreamRes.headers.connection)
    const outHeaders: string[] = []
    const raw = upstreamRes.rawHeaders
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!
      let value = raw[i + 1]!
      const lower = name.toLowerCase()
      if (dropRes.has(lower)) continue
      if (lower === 'location' && (value === targetOrigin || value.startsWith(targetOrigin + '/'))) {
        value = proxyOrigin + value.slice(targetOrigin.length)
      }
      outHeaders.push(name, value)
    }
    const status = upstreamRes.statusCode ?? 502
    res.writeHead(status, upstreamRes.statusMessage, outHeaders)
    entry.status = status

    // Decide up front whether this response will be cut, reserving one unit of resetCount so that
    // concurrent responses cannot overshoot it; the unit is given back if the body turns out too short.
    let cutAt = -1
    if (isBlobGet && status >= 200 && status < 300 && current.resetAfterBytes > 0 && current.resetCount > 0) {
      current.resetCount--
      cutAt = current.resetAfterBytes
    }
    const corrupting = isBlobGet && current.corruptBlobBodies

    let offset = 0
    try {
      for await (const data of upstreamRes) {
        let chunk = data as Buffer
        if (corrupting) chunk = corrupt(chunk, offset)
        // Cut only if at least one byte would be withheld: a cut after the full body is no cut.
        if (cutAt >= 0 && offset + chunk.length > cutAt) {
          await sendBody(res, entry, chunk.subarray(0, cutAt - offset))
          // end() (FIN after everything queued is flushed) rather than an immediate destroy or RST,
          // so that the client deterministically receives exactly resetAfterBytes body bytes first.
          const socket = res.socket
          if (socket) socket.end(() => socket.destroy())
          upstreamRes.destroy()
          return
        }
        await sendBody(res, entry, chunk)
        offset += chunk.length
      }
    } catch {
      // Upstream died mid-body (e.g. the registry's 416 quirk), the client left, or we are stopping:
      // the only honest thing left is to drop the client connection.
      upstreamRes.destroy()
      res.destroy()
      return
    }
    if (cutAt >= 0) current.resetCount++ // body was too short to cut: give the unit back
    res.end()
  }

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    handle(req, res).catch(() => {
      // Only reached on stop() (aborted sleeps) or client disconnects; nothing to report.
      res.destroy()
    })
  })

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const port = (server.address() as net.AddressInfo).port
  const host = `127.0.0.1:${port}`
  proxyOrigin = `http://${host}`

  let stopped: Promise<void> | undefined
  return {
    url: proxyOrigin,
    host,
    log,
    blobRequests: () => log.filter((e) => e.isBlob && e.method === 'GET'),
    blobBytes: () => log.reduce((n, e) => (e.isBlob && e.method === 'GET' ? n + e.bytes : n), 0),
    reset: () => {
      log.length = 0
    },
    set: applyFaults,
    stop() {
      stopped ??= new Promise<void>((resolve) => {
        stopController.abort()
        server.close(() => resolve())
        for (const s of sockets) s.destroy()
        agent.destroy()
      })
      return stopped
    },
  }
}
