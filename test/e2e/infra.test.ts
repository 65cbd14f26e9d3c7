/**
 * Proves the integration-test infrastructure works: the registries started by global-setup, the token
 * service and the fault-injecting proxy. Everything here talks to real processes and sockets.
 */
import { createHash, randomBytes } from 'node:crypto'
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest'
import { Agent, request, type Dispatcher } from 'undici'
import type {} from '../helpers/global-setup.js' // ProvidedContext typing for inject()
import { startProxy, type FaultProxy } from '../helpers/proxy.js'
import { startTokenService } from '../helpers/token-service.js'

const sha256 = (data: Buffer): string => 'sha256:' + createHash('sha256').update(data).digest('hex')
const basic = (user: string, pass: string): string => 'Basic ' + Buffer.from(`${user}:${pass}`).toString('base64')

// A private dispatcher so keep-alive connections from these tests never leak into other files.
const dispatcher = new Agent({ keepAliveTimeout: 1000 })
afterAll(() => dispatcher.close())

async function req(
  url: string,
  opts: { method?: Dispatcher.HttpMethod; headers?: Record<string, string>; body?: Buffer; headersTimeout?: number } = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  const res = await request(url, {
    method: opts.method ?? 'GET',
    headers: opts.headers,
    body: opts.body,
    dispatcher,
    headersTimeout: opts.headersTimeout,
  })
  return { status: res.statusCode, headers: res.headers, body: Buffer.from(await res.body.arrayBuffer()) }
}

/** Monolithic blob upload: POST /blobs/uploads/ then PUT <Location>&digest=. Returns the digest and the upload Location. */
async function pushBlob(
  baseUrl: string,
  repo: string,
  data: Buffer,
  headers: Record<string, string> = {},
): Promise<{ digest: string; location: string }> {
  const digest = sha256(data)
  const start = await req(`${baseUrl}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers })
  expect(start.status).toBe(202)
  const location = String(start.headers.location)
  const putUrl = new URL(location, baseUrl)
  putUrl.searchParams.set('digest', digest)
  const put = await req(putUrl.toString(), {
    method: 'PUT',
    headers: { ...headers, 'content-type': 'application/octet-stream', 'content-length': String(data.length) },
    body: data,
  })
  expect(put.status).toBe(201)
  return { digest, location }
}

/** Parses `Bearer realm="..",service="..",scope=".."` into a map. */
function parseChallenge(header: string): Record<string, string> {
  expect(header).toMatch(/^Bearer /)
  const out: Record<string, string> = {}
  for (const m of header.slice(7).matchAll(/(\w+)="([^"]*)"/g)) out[m[1]!] = m[2]!
  return out
}

describe('anonymous registry', () => {
  const reg = inject('registry')

  it('answers GET /v2/ with 200', async () => {
    const res = await req(`${reg.url}/v2/`)
    expect(res.status).toBe(200)
    expect(res.headers['docker-distribution-api-version']).toBe('registry/2.0')
  })

  it('serves a monolithically pushed blob, including Range requests (206)', async () => {
    const data = randomBytes(1000)
    const { digest } = await pushBlob(reg.url, 'infra/anon', data)
    const full = await req(`${reg.url}/v2/infra/anon/blobs/${digest}`)
    expect(full.status).toBe(200)
    expect(full.body.equals(data)).toBe(true)

    const part = await req(`${reg.url}/v2/infra/anon/blobs/${digest}`, { headers: { range: 'bytes=100-199' } })
    expect(part.status).toBe(206)
    expect(part.headers['content-range']).toBe('bytes 100-199/1000')
    expect(part.body.equals(data.subarray(100, 200))).toBe(true)
  })
})

describe('basic-auth registry', () => {
  const reg = inject('basicRegistry')

  it('answers 401 without credentials, 401 with wrong ones and 200 with the right ones', async () => {
    const anon = await req(`${reg.url}/v2/`)
    expect(anon.status).toBe(401)
    expect(String(anon.headers['www-authenticate'])).toMatch(/^Basic realm=/)

    const wrong = await req(`${reg.url}/v2/`, { headers: { authorization: basic(reg.username, 'nope') } })
    expect(wrong.status).toBe(401)

    const ok = await req(`${reg.url}/v2/`, { headers: { authorization: basic(reg.username, reg.password) } })
    expect(ok.status).toBe(200)
  })
})

describe('token-auth registry', () => {
  const reg = inject('tokenRegistry')

  async function getToken(scope: string, auth = basic(reg.username, reg.password)): Promise<string> {
    const url = new URL(reg.tokenServiceUrl)
    url.searchParams.set('service', reg.service)
    url.searchParams.set('scope', scope)
    const res = await req(url.toString(), { headers: { authorization: auth } })
    expect(res.status).toBe(200)
    const json = JSON.parse(res.body.toString()) as { token: string; access_token: string; expires_in: number; issued_at: string }
    expect(json.access_token).toBe(json.token)
    expect(json.expires_in).toBe(300)
    expect(Number.isNaN(Date.parse(json.issued_at))).toBe(false)
    return json.token
  }

  it('challenges with WWW-Authenticate: Bearer pointing at the token service', async () => {
    const res = await req(`${reg.url}/v2/infra/token/blobs/${sha256(Buffer.from('x'))}`)
    expect(res.status).toBe(401)
    const challenge = parseChallenge(String(res.headers['www-authenticate']))
    expect(challenge).toMatchObject({
      realm: reg.tokenServiceUrl,
      service: reg.service,
      scope: 'repository:infra/token:pull',
    })
  })

  it('token service refuses anonymous and wrong credentials', async () => {
    const url = `${reg.tokenServiceUrl}?service=${reg.service}&scope=repository:infra/token:pull`
    expect((await req(url)).status).toBe(401)
    expect((await req(url, { headers: { authorization: basic(reg.username, 'wrong') } })).status).toBe(401)
  })

  it('accepts tokens from the token service for push and pull, and enforces their scope', async () => {
    const pushToken = await getToken('repository:infra/token:pull,push')
    const data = randomBytes(4096)
    const { digest } = await pushBlob(reg.url, 'infra/token', data, { authorization: `Bearer ${pushToken}` })

    const pullToken = await getToken('repository:infra/token:pull')
    const pulled = await req(`${reg.url}/v2/infra/token/blobs/${digest}`, {
      headers: { authorization: `Bearer ${pullToken}`, range: 'bytes=0-99' },
    })
    expect(pulled.status).toBe(206)
    expect(pulled.body.equals(data.subarray(0, 100))).toBe(true)

    // The registry really checks the token: one scoped to another repository is refused.
    const otherToken = await getToken('repository:infra/other:pull')
    const denied = await req(`${reg.url}/v2/infra/token/blobs/${digest}`, { headers: { authorization: `Bearer ${otherToken}` } })
    expect(denied.status).toBe(401)

    // ... and so is a token whose signature has been tampered with.
    const [h, p, s] = pullToken.split('.')
    const tampered = `${h}.${p}.${s!.slice(0, -4)}AAAA`
    const bad = await req(`${reg.url}/v2/infra/token/blobs/${digest}`, { headers: { authorization: `Bearer ${tampered}` } })
    expect(bad.status).toBe(401)
  })

  it('a standalone token service counts requests, signs the documented claims and cleans up', async () => {
    const svc = await startTokenService({ username: 'carol', password: 'pw', expiresInSeconds: 42 })
    try {
      const base = `${svc.url}?service=${svc.service}&scope=repository:a/b:pull&scope=repository:c:push,pull`
      expect((await req(base)).status).toBe(401)
      const res = await req(base, { headers: { authorization: basic('carol', 'pw') } })
      expect(res.status).toBe(200)
      expect(svc.requests).toBe(2)
      const { token, expires_in } = JSON.parse(res.body.toString()) as { token: string; expires_in: number }
      expect(expires_in).toBe(42)
      const [h, p] = token.split('.')
      const header = JSON.parse(Buffer.from(h!, 'base64url').toString()) as { alg: string; x5c: string[] }
      const claims = JSON.parse(Buffer.from(p!, 'base64url').toString()) as Record<string, unknown>
      expect(header.alg).toBe('RS256')
      expect(header.x5c).toHaveLength(1)
      expect(claims).toMatchObject({
        iss: svc.issuer,
        sub: 'carol',
        aud: svc.service,
        access: [
          { type: 'repository', name: 'a/b', actions: ['pull'] },
          { type: 'repository', name: 'c', actions: ['push', 'pull'] },
        ],
      })
      expect((claims.exp as number) - (claims.iat as number)).toBe(42)
    } finally {
      await svc.stop()
    }
    await expect(req(`${svc.url}?service=${svc.service}`)).rejects.toThrow()
  })
})

describe('fault proxy', () => {
  const reg = inject('registry')
  let proxy: FaultProxy
  let blob: Buffer
  let blobUrl: string

  beforeAll(async () => {
    proxy = await startProxy(reg.url)
    blob = randomBytes(256 * 1024)
    // Push through the proxy: exercises request-body streaming and Location rewriting.
    const { digest, location } = await pushBlob(proxy.url, 'infra/proxy', blob)
    expect(new URL(location, proxy.url).host).toBe(proxy.host)
    blobUrl = `${proxy.url}/v2/infra/proxy/blobs/${digest}`
  })
  afterAll(() => proxy.stop())
  afterEach(() => {
    // Back to a clean slate (defaults) for the next test.
    proxy.set({
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
    })
    proxy.reset()
  })

  it('logged the push (POST, PUT) and rewrote the upload Location to itself', () => {
    // beforeAll's log is still there for the first test (afterEach has not run yet).
    expect(proxy.log.map((e) => [e.method, e.status])).toEqual([
      ['POST', 202],
      ['PUT', 201],
    ])
  })

  it('forwards and counts blob requests and bytes', async () => {
    const full = await req(blobUrl)
    expect(full.status).toBe(200)
    expect(full.body.equals(blob)).toBe(true)
    const part = await req(blobUrl, { headers: { range: 'bytes=10-1033' } })
    expect(part.status).toBe(206)
    expect(part.body.equals(blob.subarray(10, 1034))).toBe(true)
    const head = await req(blobUrl, { method: 'HEAD' })
    expect(head.status).toBe(200)
    expect(await req(`${proxy.url}/v2/`)).toMatchObject({ status: 200 })

    expect(proxy.blobRequests().map(({ headers: _headers, ...e }) => e)).toEqual([
      { method: 'GET', path: new URL(blobUrl).pathname, status: 200, bytes: blob.length, isBlob: true },
      { method: 'GET', path: new URL(blobUrl).pathname, range: 'bytes=10-1033', status: 206, bytes: 1024, isBlob: true },
    ])
    expect(proxy.blobBytes()).toBe(blob.length + 1024)
    expect(proxy.log).toHaveLength(4)
    expect(proxy.log[3]).toMatchObject({ method: 'GET', path: '/v2/', isBlob: false, status: 200 })
  })

  it('cuts blob bodies after resetAfterBytes, resetCount times, then behaves normally', async () => {
    proxy.set({ resetAfterBytes: 10_000, resetCount: 1 })
    await expect(req(blobUrl)).rejects.toThrow()
    expect(proxy.blobRequests()[0]).toMatchObject({ status: 200, bytes: 10_000 })

    const again = await req(blobUrl)
    expect(again.body.equals(blob)).toBe(true)
    expect(proxy.blobRequests()[1]).toMatchObject({ status: 200, bytes: blob.length })
  })

  it('answers blob GETs with failStatus and Retry-After failCount times', async () => {
    proxy.set({ failStatus: 503, failCount: 2, retryAfterSeconds: 7 })
    for (let i = 0; i < 2; i++) {
      const res = await req(blobUrl)
      expect(res.status).toBe(503)
      expect(res.headers['retry-after']).toBe('7')
    }
    expect((await req(blobUrl)).status).toBe(200)

    proxy.set({ failStatus: 429, failCount: 1, retryAfterSeconds: 0 })
    const limited = await req(blobUrl)
    expect(limited.status).toBe(429)
    expect(limited.headers['retry-after']).toBeUndefined()
    expect(proxy.blobRequests().map((e) => e.status)).toEqual([503, 503, 200, 429])
  })

  it('adds latency', async () => {
    proxy.set({ latencyMs: 300 })
    const t0 = performance.now()
    expect((await req(`${proxy.url}/v2/`)).status).toBe(200)
    expect(performance.now() - t0).toBeGreaterThanOrEqual(300)
  })

  it('caps bandwidth', async () => {
    proxy.set({ bandwidthBytesPerSec: 512 * 1024 })
    const t0 = performance.now()
    const res = await req(blobUrl) // 256 KiB at 512 KiB/s: at least 500 ms
    expect(res.body.equals(blob)).toBe(true)
    expect(performance.now() - t0).toBeGreaterThanOrEqual(500)
  })

  it('corrupts blob bodies but keeps their length', async () => {
    proxy.set({ corruptBlobBodies: true })
    const full = await req(blobUrl)
    expect(full.body.length).toBe(blob.length)
    expect(full.body.equals(blob)).toBe(false)
    const small = await req(blobUrl, { headers: { range: 'bytes=5-6' } })
    expect(small.status).toBe(206)
    expect(small.body.length).toBe(2)
    expect(small.body.equals(blob.subarray(5, 7))).toBe(false)
    // Non-blob responses are untouched.
    expect((await req(`${proxy.url}/v2/`)).body.toString()).toBe('{}')
  })

  it('resets connections when down, and recovers', async () => {
    proxy.set({ down: true })
    await expect(req(`${proxy.url}/v2/`)).rejects.toThrow()
    await expect(req(blobUrl)).rejects.toThrow()
    proxy.set({ down: false })
    expect((await req(`${proxy.url}/v2/`)).status).toBe(200)
  })

  it('black-holes requests (client times out)', async () => {
    proxy.set({ blackhole: true })
    await expect(req(`${proxy.url}/v2/`, { headersTimeout: 300 })).rejects.toThrow(/timeout/i)
    expect(proxy.log[0]).toMatchObject({ path: '/v2/', status: 0 })
  })

  it('stop() closes open connections, including black-holed ones', async () => {
    const p = await startProxy(reg.url, { blackhole: true })
    const pending = req(`${p.url}/v2/`)
    await new Promise((r) => setTimeout(r, 100))
    const t0 = performance.now()
    await p.stop()
    await expect(pending).rejects.toThrow()
    expect(performance.now() - t0).toBeLessThan(1000)
  })
})
