#!/usr/bin/env node
// A small streaming HTTP reverse proxy that simulates a remote registry: every request waits LATENCY ms before
// it is forwarded, and response bodies of all connections share one bandwidth cap (a virtual-clock pacer:
// each chunk reserves the next free slot of the link, so N parallel downloads get 1/N of the rate each and
// their sum never exceeds the cap).
//
// Usage: node bench/slow-proxy.mjs --port P --target http://127.0.0.1:5000 [--latency-ms 10] [--rate 125000000]
//   Prints "ready <port>" on stdout once listening. SIGTERM/SIGINT stop it.
//   --rate is bytes per second (0 = unlimited); default 125000000 (1 Gbit/s).
//   GET /__proxy/stats answers JSON counters (requests, bytes) without forwarding.
import http from 'node:http'

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]])
  return acc
}, []))
const port = Number(args.port ?? 0)
const target = new URL(args.target ?? 'http://127.0.0.1:5000')
const latencyMs = Number(args['latency-ms'] ?? 10)
const rate = Number(args.rate ?? 125_000_000)
/** Largest piece paced at once: keeps the link shared finely between connections. */
const SLICE = 64 * 1024

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity })
const stats = { requests: 0, bytes: 0, active: 0 }
let linkFreeAt = 0 // ms (performance.now clock) when the shared link finishes sending what was queued

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const now = () => performance.now()

/** Waits for this piece's slot on the shared link. */
async function pace(bytes) {
  if (!rate) return
  const t = now()
  const start = Math.max(t, linkFreeAt)
  linkFreeAt = start + (bytes / rate) * 1000
  // Send at the end of the slot: the sum of bytes sent by time T never exceeds rate*T.
  const wait = linkFreeAt - t
  if (wait >= 1) await sleep(wait)
  else if (wait > 0) await new Promise((r) => setImmediate(r))
}

function write(res, chunk) {
  return res.write(chunk) ? undefined : new Promise((r) => res.once('drain', r))
}

const server = http.createServer(async (req, res) => {
  if (req.url === '/__proxy/stats') {
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify(stats))
    return
  }
  stats.requests++
  stats.active++
  res.on('close', () => { stats.active-- })
  if (latencyMs > 0) await sleep(latencyMs)
  const headers = { ...req.headers, host: target.host }
  const up = http.request({
    host: target.hostname, port: target.port, method: req.method, path: req.url, headers, agent,
  }, async (ur) => {
    res.writeHead(ur.statusCode ?? 502, ur.headers)
    try {
      for await (const chunk of ur) {
        for (let pos = 0; pos < chunk.length; pos += SLICE) {
          const piece = chunk.subarray(pos, Math.min(pos + SLICE, chunk.length))
          await pace(piece.length)
          if (res.destroyed) { ur.destroy(); return }
          stats.bytes += piece.length
          await write(res, piece)
        }
      }
      res.end()
    } catch {
      res.destroy()
    }
  })
  up.on('error', () => { if (!res.headersSent) { res.writeHead(502); res.end() } else res.destroy() })
  res.on('close', () => { if (!res.writableFinished) up.destroy() })
  req.pipe(up)
})
server.keepAliveTimeout = 60_000
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${server.address().port}\n`)
})
const stop = () => { server.close(); agent.destroy(); process.exit(0) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
