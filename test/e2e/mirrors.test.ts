/**
 * Mirrors, pull-through caches, proxies and request deadlines against real parts: Debian's docker-registry as the
 * upstream and as a pull-through cache (`proxy: remoteurl:`) in front of it, our fault/counting proxies between
 * cnaifs and each of them, and the real CLI configured through hosts.toml and registries.conf files.
 */
import { execFile } from 'node:child_process'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import type { TLSSocket } from 'node:tls'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startProxy, type FaultProxy } from '../helpers/proxy.js'
import { startRegistry, type RegistryProcess } from '../helpers/registry.js'
import {
  buildTar, cleanupTempDirs, describeResult, makeModelDir, modelConfig, pushArtifact, pushModelDir, runCli, seededBytes,
  sha256, tempDir, uniqueRepo, type CliResult, type ModelDir, type RunCliOptions,
} from '../helpers/cli.js'
import { RegistryClient } from '../../src/registry/client.js'
import { FileCredentialStore } from '../../src/registry/credentials.js'
import { parseReference } from '../../src/registry/reference.js'

const execFileAsync = promisify(execFile)

const MODEL = {
  'config.json': '{"architectures":["Mirror"]}\n',
  'weights/model.safetensors': { size: 3 * 1024 * 1024 + 123, seed: 'mirror-weights' },
  'README.md': '# mirrored\n',
}

let upstream: RegistryProcess
let cache: RegistryProcess
/** What cnaifs talks to as the registry itself (the reference's host). */
let upstreamDirect: FaultProxy
/** Between the pull-through cache and the upstream: what the upstream serves to the cache. */
let upstreamForCache: FaultProxy
/** In front of the pull-through cache: the mirror cnaifs is configured with. */
let mirror: FaultProxy
let model: ModelDir
let repo: string
let ref: string
let hostsDir: string

afterAll(async () => {
  await Promise.all([mirror?.stop(), upstreamForCache?.stop(), upstreamDirect?.stop()])
  await Promise.all([cache?.stop(), upstream?.stop()])
  await cleanupTempDirs()
})

beforeAll(async () => {
  upstream = await startRegistry()
  upstreamDirect = await startProxy(upstream.url)
  upstreamForCache = await startProxy(upstream.url)
  cache = await startRegistry({ proxyRemoteUrl: upstreamForCache.url })
  mirror = await startProxy(cache.url)
  model = await makeModelDir(MODEL, 'mirrors')
  repo = uniqueRepo('mirrors/model')
  ref = `${upstreamDirect.host}/${repo}:v1`
  await pushModelDir(model.dir, `${upstream.host}/${repo}:v1`, { format: 'tar' })
  hostsDir = await hostsToml(upstreamDirect.host, `
server = "http://${upstreamDirect.host}"

[host."http://${mirror.host}"]
  capabilities = ["pull", "resolve"]
  [host."http://${mirror.host}".header]
    X-Dragonfly-Registry = "http://${upstreamDirect.host}"
    X-Node = ["node-1", "rack-7"]
`)
}, 120_000)

/** A certs.d root with one hosts.toml for `host` (in containerd's host_port_ directory form). */
async function hostsToml(host: string, text: string): Promise<string> {
  const root = await tempDir('cnaifs-certsd-')
  const dir = join(root, host.replace(/:(\d+)$/, '_$1_'))
  await mkdir(dir, { recursive: true })
  await writeFile(join(dir, 'hosts.toml'), text)
  return root
}

async function session(): Promise<{ cacheDir: string; run: (args: string[], opts?: RunCliOptions) => Promise<CliResult> }> {
  const cacheDir = await tempDir('cnaifs-cache-')
  return { cacheDir, run: (args, opts) => runCli(['--cache-dir', cacheDir, ...args], opts) }
}

function expectOk(r: CliResult): void {
  expect(r.code, describeResult(r)).toBe(0)
}

const resetAll = () => { for (const p of [mirror, upstreamDirect, upstreamForCache]) { p.reset(); p.set({ down: false, blackhole: false }) } }


/**
 * A little HTTP server in front of the upstream registry for the redirect tests: `blobGet` may answer a blob GET
 * itself (a redirect, a refusal) by returning true; everything else is passed to the registry unchanged.
 */
async function startFront(blobGet: (req: http.IncomingMessage, res: http.ServerResponse) => boolean = () => false): Promise<{ host: string; port: number; stop: () => Promise<void> }> {
  const regPort = new URL(upstream.url).port
  const server = http.createServer((req, res) => {
    if (req.url?.includes('/blobs/') && blobGet(req, res)) return
    const up = http.request({ host: '127.0.0.1', port: regPort, path: req.url, method: req.method, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers)
      ur.pipe(res)
    })
    req.pipe(up)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  return { host: `127.0.0.1:${port}`, port, stop: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }) }
}

describe('containerd hosts.toml: a pull-through cache as the mirror', () => {
  it('cat and ls read the model through the mirror, which is sent ?ns= and the configured headers', async () => {
    resetAll()
    const s = await session()
    const cat = await s.run(['cat', '--hosts-dir', hostsDir, ref, 'weights/model.safetensors'])
    expectOk(cat)
    expect(sha256(cat.stdout)).toBe(model.files['weights/model.safetensors']!.sha256)
    const ls = await s.run(['ls', '-R', '--hosts-dir', hostsDir, ref])
    expectOk(ls)
    expect(ls.stdout.toString().split('\n')).toEqual(expect.arrayContaining(['config.json', 'weights/model.safetensors', 'README.md']))

    expect(mirror.log.length).toBeGreaterThan(0)
    expect(upstreamDirect.log).toEqual([]) // the registry itself was never needed
    const ns = `ns=${encodeURIComponent(upstreamDirect.host)}`
    for (const e of mirror.log) {
      expect(e.path.endsWith(`?${ns}`), e.path).toBe(true)
      expect(e.headers['x-dragonfly-registry']).toBe(`http://${upstreamDirect.host}`)
      expect(e.headers['x-node']).toBe('node-1, rack-7')
    }
    expect(mirror.log.some((e) => e.path.startsWith(`/v2/${repo}/manifests/v1?`))).toBe(true)
    // The pull-through cache fetched each blob once from the upstream.
    expect(upstreamForCache.blobBytes()).toBeLessThanOrEqual(2 * (model.files['weights/model.safetensors']!.size + 64 * 1024))
  })

  it('mounts through the mirror and serves every file right', async () => {
    resetAll()
    const s = await session()
    const mp = await tempDir('cnaifs-mp-')
    const m = await s.run(['mount', '--hosts-dir', hostsDir, ref, mp], { timeoutMs: 60_000 })
    try {
      expectOk(m)
      for (const [path, f] of Object.entries(model.files)) {
        expect(sha256(await readFile(join(mp, path))), path).toBe(f.sha256)
      }
      expect(mirror.blobRequests().length).toBeGreaterThan(0)
      expect(upstreamDirect.blobRequests()).toEqual([])
    } finally {
      const u = await s.run(['unmount', mp], { timeoutMs: 20_000 })
      if (u.code !== 0) await execFileAsync('fusermount', ['-uz', mp]).catch(() => undefined)
    }
  }, 120_000)

  it('mirror down: the upstream serves, within the request deadline', async () => {
    resetAll()
    mirror.set({ down: true })
    const s = await session()
    const r = await s.run(['cat', '--request-timeout', '5', '--hosts-dir', hostsDir, ref, 'config.json'])
    expectOk(r)
    expect(r.stdout.toString()).toBe(MODEL['config.json'])
    expect(mirror.log).toEqual([]) // connections were reset before any request
    expect(upstreamDirect.log.some((e) => e.path === `/v2/${repo}/manifests/v1`)).toBe(true)
    // The registry itself is never told a namespace, nor given a mirror's headers.
    for (const e of upstreamDirect.log) {
      expect(e.path.includes('ns='), e.path).toBe(false)
      expect(e.headers['x-node']).toBeUndefined()
    }
    expect(upstreamDirect.blobRequests().length).toBeGreaterThan(0)
    mirror.set({ down: false })
  })

  it('mirror black-holed: the upstream serves once the mirror\'s request deadline runs out', async () => {
    resetAll()
    mirror.set({ blackhole: true })
    const s = await session()
    const r = await s.run(['cat', '--request-timeout', '2', '--hosts-dir', hostsDir, ref, 'README.md'], { timeoutMs: 30_000 })
    expectOk(r)
    expect(r.stdout.toString()).toBe(MODEL['README.md'])
    expect(upstreamDirect.log.some((e) => e.path === `/v2/${repo}/manifests/v1`)).toBe(true)
    mirror.set({ blackhole: false })
  })

  it('mirror 404: the upstream serves', async () => {
    resetAll()
    const empty = await startRegistry()
    const emptyProxy = await startProxy(empty.url)
    try {
      const dir = await hostsToml(upstreamDirect.host, `server = "http://${upstreamDirect.host}"\n[host."http://${emptyProxy.host}"]\n  capabilities = ["pull", "resolve"]\n`)
      const s = await session()
      const r = await s.run(['cat', '--hosts-dir', dir, ref, 'config.json'])
      expectOk(r)
      expect(r.stdout.toString()).toBe(MODEL['config.json'])
      expect(emptyProxy.log.some((e) => e.status === 404)).toBe(true)
      expect(upstreamDirect.log.some((e) => e.status === 200)).toBe(true)
    } finally {
      await emptyProxy.stop()
      await empty.stop()
    }
  })

  it('tags are resolved only at resolve hosts; blobs come from pull hosts', async () => {
    resetAll()
    const dir = await hostsToml(upstreamDirect.host, `server = "http://${upstreamDirect.host}"\n[host."http://${mirror.host}"]\n  capabilities = ["pull"]\n`)
    const s = await session()
    const r = await s.run(['cat', '--hosts-dir', dir, ref, 'weights/model.safetensors'])
    expectOk(r)
    expect(mirror.log.some((e) => e.path.includes('/manifests/v1'))).toBe(false)
    expect(upstreamDirect.log.some((e) => e.path === `/v2/${repo}/manifests/v1`)).toBe(true)
    expect(mirror.blobRequests().length).toBeGreaterThan(0)
    expect(upstreamDirect.blobRequests()).toEqual([])
  })

  it('a whole-blob 200 from the pull-through cache is read to its end with keepExtra, each byte passed once', async () => {
    const blobRepo = uniqueRepo('mirrors/wholeblob')
    const data = seededBytes(2 * 1024 * 1024 + 77, 'whole-blob')
    const pushed = await pushArtifact(upstream.host, blobRepo, 'v1', {
      config: { mediaType: 'application/vnd.cncf.model.config.v1+json', data: modelConfig('w') },
      layers: [{ mediaType: 'application/vnd.cncf.model.weight.v1.raw', data, annotations: { 'org.opencontainers.image.title': 'w.bin' } }],
    })
    resetAll()
    const client = new RegistryClient({ credentials: new FileCredentialStore({ files: [], env: {} }), plainHttp: true, hosts: { source: 'none' } })
    try {
      const at = parseReference(`${mirror.host}/${blobRepo}:v1`)
      const seen: Array<[number, number]> = []
      const out = Buffer.alloc(data.length)
      await client.streamBlobRange(at, pushed.layerDigests[0]!, 1000, 4096, (chunk, position) => {
        chunk.copy(out, position)
        seen.push([position, position + chunk.length])
      }, { keepExtra: true })
      const blobGet = mirror.blobRequests()[0]!
      expect(blobGet.range).toBe('bytes=1000-5095')
      expect(blobGet.status).toBe(200) // the cache did not have the blob: it streamed all of it
      expect(sha256(out)).toBe(sha256(data))
      seen.sort((a, b) => a[0] - b[0])
      let next = 0
      for (const [a, b] of seen) { expect(a).toBe(next); next = b }
      expect(next).toBe(data.length)
      // distribution 2.8 fetches an uncached blob twice from the upstream (one copy for the client, one it stores);
      // reading to the end lets the stored copy complete, so nothing more is fetched later.
      expect(upstreamForCache.blobBytes()).toBeLessThanOrEqual(2 * data.length)
      // Once the cache has stored it (in the background: ask until it answers with a range, a bounded number of
      // times), a range is a range.
      let status = 0
      for (let i = 0; i < 100 && status !== 206; i++) {
        if (i) await new Promise((resolve) => setTimeout(resolve, 100))
        mirror.reset()
        const part = await client.readBlobRange(at, pushed.layerDigests[0]!, 12345, 1000)
        expect(part.equals(data.subarray(12345, 13345))).toBe(true)
        status = mirror.blobRequests()[0]!.status
      }
      expect(status).toBe(206)
    } finally {
      await client.close()
    }
  })
})

describe('Dragonfly', () => {
  it('prefetch requests to a host with X-Dragonfly-Registry say so; reads do not', async () => {
    resetAll()
    const client = new RegistryClient({
      credentials: new FileCredentialStore({ files: [], env: {} }),
      hosts: { source: 'containerd', hostsDirs: [hostsDir] }, dragonflyPrefetchPriority: 4,
    })
    try {
      const at = parseReference(ref)
      const manifest = JSON.parse((await client.getManifest(at)).bytes.toString()) as { layers: Array<{ digest: string; size: number }> }
      const layer = manifest.layers.find((l) => l.size > 1024 * 1024)!
      await client.readBlobRange(at, layer.digest, 0, 4096, { purpose: 'prefetch' })
      await client.readBlobRange(at, layer.digest, 4096, 4096, { purpose: 'read' })
      await client.readBlobRange(at, layer.digest, 8192, 4096)
      const [prefetch, read, plain] = mirror.blobRequests()
      expect(prefetch!.headers).toMatchObject({ 'x-dragonfly-prefetch': 'true', 'x-dragonfly-priority': '4', 'x-dragonfly-registry': `http://${upstreamDirect.host}` })
      for (const e of [read!, plain!]) {
        expect(e.headers['x-dragonfly-prefetch']).toBeUndefined()
        expect(e.headers['x-dragonfly-priority']).toBeUndefined()
        expect(e.headers['x-dragonfly-registry']).toBe(`http://${upstreamDirect.host}`)
      }
    } finally {
      await client.close()
    }
  })
})

describe('CRI-O registries.conf', () => {
  it('rewrites the location and reads through the mirror, then the primary when the mirror is down', async () => {
    resetAll()
    const dir = await tempDir('cnaifs-regconf-')
    const file = join(dir, 'registries.conf')
    const [ns, ...rest] = repo.split('/')
    await writeFile(file, `
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "models.example/team"
location = "${upstreamDirect.host}/${ns}"

[[registry.mirror]]
location = "${mirror.host}/${ns}"
`)
    const name = `models.example/team/${rest.join('/')}:v1`
    const s = await session()
    const r = await s.run(['cat', '--registry-config', 'crio', '--registries-conf', file, name, 'config.json'])
    expectOk(r)
    expect(r.stdout.toString()).toBe(MODEL['config.json'])
    expect(mirror.log.some((e) => e.path === `/v2/${repo}/manifests/v1`)).toBe(true)
    expect(mirror.log.every((e) => !e.path.includes('ns='))).toBe(true)
    expect(upstreamDirect.log).toEqual([])

    mirror.set({ down: true })
    const s2 = await session()
    const r2 = await s2.run(['cat', '--registries-conf', file, name, 'README.md'])
    expectOk(r2)
    expect(r2.stdout.toString()).toBe(MODEL['README.md'])
    expect(upstreamDirect.log.some((e) => e.path === `/v2/${repo}/manifests/v1`)).toBe(true)
    mirror.set({ down: false })
  })

  it('a blocked registry is refused with one clear line', async () => {
    const dir = await tempDir('cnaifs-regconf-')
    const file = join(dir, 'registries.conf')
    await writeFile(file, `[[registry]]\nprefix = "models.example/blocked"\nlocation = "${upstreamDirect.host}/x"\nblocked = true\n`)
    await mkdir(`${file}.d`)
    const s = await session()
    upstreamDirect.reset()
    const r = await s.run(['inspect', '--registries-conf', file, 'models.example/blocked/m:v1'])
    expect(r.code, describeResult(r)).toBe(2)
    expect(r.stderr).toBe(`cnaifs: models.example/blocked/m is blocked by ${file} ([[registry]] prefix "models.example/blocked" has blocked = true)\n`)
    expect(upstreamDirect.log).toEqual([])
  })
})

/** A reverse proxy whose blob 206 answers become 200 with the same Content-Range (as Dragonfly < 1.3.11 answers). */
async function startPartial200Proxy(target: URL): Promise<{ host: string; statuses: number[]; stop: () => Promise<void> }> {
  const statuses: number[] = []
  const server = http.createServer((req, res) => {
    const up = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: { ...req.headers, host: target.host } }, (ur) => {
      const status = ur.statusCode === 206 ? 200 : ur.statusCode ?? 502
      if (req.url?.includes('/blobs/')) statuses.push(status)
      res.writeHead(status, ur.headers)
      ur.pipe(res)
    })
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  return { host: `127.0.0.1:${port}`, statuses, stop: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }) }
}

describe('range answers', () => {
  it('a 200 that carries a Content-Range is a partial reply, placed where it says', async () => {
    const p = await startPartial200Proxy(new URL(upstream.url))
    try {
      const s = await session()
      const r = await s.run(['cat', '--registry-config', 'none', `${p.host}/${repo}:v1`, 'weights/model.safetensors'])
      expectOk(r)
      expect(sha256(r.stdout)).toBe(model.files['weights/model.safetensors']!.sha256)
      expect(p.statuses.length).toBeGreaterThan(0)
      expect(p.statuses.every((x) => x === 200)).toBe(true)
    } finally {
      await p.stop()
    }
  })
})

/** An HTTP forward proxy: absolute-form requests and CONNECT, counted; `registry.test` names resolve to 127.0.0.1. */
async function startForwardProxy(opts: { tunnel?: boolean } = {}): Promise<{ url: string; requests: string[]; connects: string[]; stop: () => Promise<void> }> {
  const requests: string[] = []
  const connects: string[] = []
  const server = http.createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`)
    let u: URL
    try { u = new URL(req.url ?? '') } catch { res.writeHead(400).end(); return }
    const up = http.request({ host: '127.0.0.1', port: u.port || 80, path: u.pathname + u.search, method: req.method, headers: { ...req.headers, host: u.host } }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers)
      ur.pipe(res)
    })
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  const tunnels = new Set<net.Socket>()
  server.on('connect', (req, socket: net.Socket, head: Buffer) => {
    connects.push(req.url ?? '')
    if (!opts.tunnel) {
      // A proxy that will not tunnel there answers so (an abrupt hang-up is covered by the request deadline).
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n')
      return
    }
    const port = Number((req.url ?? '').split(':').pop())
    const upstreamSocket = net.connect(port, '127.0.0.1', () => {
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n')
      if (head.length) upstreamSocket.write(head)
      upstreamSocket.pipe(socket)
      socket.pipe(upstreamSocket)
    })
    for (const s of [socket, upstreamSocket]) { tunnels.add(s); s.on('error', () => {}); s.on('close', () => tunnels.delete(s)) }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  return {
    url: `http://127.0.0.1:${port}`, requests, connects,
    stop: () => new Promise((resolve) => { for (const t of tunnels) t.destroy(); server.closeAllConnections(); server.close(() => resolve()) }),
  }
}

interface TestPki { dir: string; ca: string; serverCert: string; serverKey: string; clientCert: string; clientKey: string }

/** A CA, a server certificate for registry.test and 127.0.0.1, and a client certificate (CN=node-1), with openssl. */
async function makePki(): Promise<TestPki> {
  const dir = await tempDir('cnaifs-pki-')
  const ssl = (args: string[]) => execFileAsync('openssl', args, { cwd: dir })
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  await ssl(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=cnaifs-test-ca'])
  await writeFile(join(dir, 'server.ext'), 'subjectAltName=DNS:registry.test,IP:127.0.0.1\n')
  await ssl(['req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=registry.test'])
  await ssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'server.ext'])
  await ssl(['req', ...ec, '-keyout', 'client.key', '-out', 'client.csr', '-subj', '/CN=node-1'])
  await ssl(['x509', '-req', '-in', 'client.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'client.cert', '-days', '2'])
  return { dir, ca: join(dir, 'ca.pem'), serverCert: join(dir, 'server.pem'), serverKey: join(dir, 'server.key'), clientCert: join(dir, 'client.cert'), clientKey: join(dir, 'client.key') }
}

/** TLS in front of the plain registry, requiring a client certificate of the test CA; records the client CNs seen. */
async function startTlsFront(pki: TestPki, target: URL): Promise<{ port: number; clients: string[]; stop: () => Promise<void> }> {
  const clients: string[] = []
  const server = https.createServer({
    key: await readFile(pki.serverKey), cert: await readFile(pki.serverCert), ca: await readFile(pki.ca), requestCert: true, rejectUnauthorized: true,
  }, (req, res) => {
    const cn = (req.socket as TLSSocket).getPeerCertificate().subject?.CN
    if (cn) clients.push(String(cn))
    const up = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: { ...req.headers, host: target.host } }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers)
      ur.pipe(res)
    })
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  server.on('tlsClientError', () => {})
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  return { port, clients, stop: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }) }
}

describe('TLS per host', () => {
  it('hosts.toml ca and client: a registry that requires a client certificate of a private CA', async () => {
    const pki = await makePki()
    const front = await startTlsFront(pki, new URL(upstream.url))
    try {
      const host = `127.0.0.1:${front.port}`
      const withCerts = await hostsToml(host, `server = "https://${host}"\nca = "${pki.ca}"\nclient = [["${pki.clientCert}", "${pki.clientKey}"]]\n`)
      const s = await session()
      const r = await s.run(['cat', '--hosts-dir', withCerts, `${host}/${repo}:v1`, 'config.json'])
      expectOk(r)
      expect(r.stdout.toString()).toBe(MODEL['config.json'])
      expect(front.clients).toContain('node-1')
      // Without the client pair the server refuses the handshake; without the CA we refuse the server.
      const noClient = await hostsToml(host, `server = "https://${host}"\nca = "${pki.ca}"\n`)
      const r2 = await (await session()).run(['cat', '--request-timeout', '5', '--hosts-dir', noClient, `${host}/${repo}:v1`, 'config.json'])
      expect(r2.code, describeResult(r2)).toBe(5)
      const noCa = await hostsToml(host, `server = "https://${host}"\nclient = [["${pki.clientCert}", "${pki.clientKey}"]]\n`)
      const r3 = await (await session()).run(['cat', '--request-timeout', '5', '--hosts-dir', noCa, `${host}/${repo}:v1`, 'config.json'])
      expect(r3.code, describeResult(r3)).not.toBe(0)
      expect(r3.stderr).toMatch(/certificate/i)
      // A client given as one path must hold its key too: said plainly, not as an OpenSSL decoder error.
      const keyless = await hostsToml(host, `server = "https://${host}"\nca = "${pki.ca}"\nclient = "${pki.clientCert}"\n`)
      const r4 = await (await session()).run(['cat', '--hosts-dir', keyless, `${host}/${repo}:v1`, 'config.json'])
      expect(r4.code, describeResult(r4)).toBe(2)
      expect(r4.stderr).toBe(`cnaifs: the client certificate ${pki.clientCert} holds no private key: give the key too, as client = [["${pki.clientCert}", "KEY"]]\n`)
    } finally {
      await front.stop()
    }
  }, 90_000)

  it('HTTPS_PROXY tunnels to a host whose Docker-layout certs.d directory has its CA and client pair', async () => {
    const pki = await makePki()
    const front = await startTlsFront(pki, new URL(upstream.url))
    const fp = await startForwardProxy({ tunnel: true })
    try {
      const name = `registry.test:${front.port}`
      const root = await tempDir('cnaifs-certsd-')
      const dir = join(root, name)
      await mkdir(dir)
      await writeFile(join(dir, 'ca.crt'), await readFile(pki.ca))
      await writeFile(join(dir, 'client.cert'), await readFile(pki.clientCert))
      await writeFile(join(dir, 'client.key'), await readFile(pki.clientKey))
      const s = await session()
      const r = await s.run(['cat', '--hosts-dir', root, `${name}/${repo}:v1`, 'weights/model.safetensors'], { env: { HTTPS_PROXY: fp.url } })
      expectOk(r)
      expect(sha256(r.stdout)).toBe(model.files['weights/model.safetensors']!.sha256)
      expect(fp.connects.length).toBeGreaterThan(0)
      expect(new Set(fp.connects)).toEqual(new Set([name]))
      expect(fp.requests).toEqual([])
      expect(front.clients).toContain('node-1')
    } finally {
      await fp.stop()
      await front.stop()
    }
  }, 90_000)
})

describe('HTTP_PROXY / HTTPS_PROXY', () => {
  it('requests go through the proxy named by HTTP_PROXY (loopback never would, so the registry is named registry.test)', async () => {
    const fp = await startForwardProxy()
    try {
      const port = new URL(upstream.url).port
      const s = await session()
      const r = await s.run(['cat', '--plain-http', '--registry-config', 'none', `registry.test:${port}/${repo}:v1`, 'config.json'], { env: { HTTP_PROXY: fp.url, NO_PROXY: 'elsewhere.example' } })
      expectOk(r)
      expect(r.stdout.toString()).toBe(MODEL['config.json'])
      expect(fp.requests).toContain(`GET http://registry.test:${port}/v2/${repo}/manifests/v1`)
      expect(fp.requests.some((x) => x.startsWith(`GET http://registry.test:${port}/v2/${repo}/blobs/sha256:`))).toBe(true)
      // https targets would be tunnelled with CONNECT; an http one is not.
      expect(fp.connects).toEqual([])
    } finally {
      await fp.stop()
    }
  })

  it('HTTPS_PROXY carries https requests as CONNECT tunnels', async () => {
    const fp = await startForwardProxy()
    try {
      const s = await session()
      const r = await s.run(['inspect', '--request-timeout', '5', '--registry-config', 'none', 'secure.registry.test/m:v1'], { env: { HTTPS_PROXY: fp.url } })
      // The proxy refuses the tunnel, so the command fails as unreachable; what matters is where it went.
      expect(r.code, describeResult(r)).toBe(5)
      expect(r.stderr).toMatch(/Proxy response \(403\)/)
      expect(fp.connects[0]).toBe('secure.registry.test:443')
      expect(fp.requests).toEqual([])
    } finally {
      await fp.stop()
    }
  })
})

describe('credentials with mirrors', () => {
  it('the mirror host gets its own credentials, the upstream\'s are only sent to the upstream', async () => {
    const mirrorUser = { username: 'mirror-user', password: 'mirror-secret' }
    const upUser = { username: 'up-user', password: 'up-secret' }
    const mirrorReg = await startRegistry({ auth: { kind: 'basic', ...mirrorUser } })
    const upReg = await startRegistry({ auth: { kind: 'basic', ...upUser } })
    const mirrorP = await startProxy(mirrorReg.url)
    const upP = await startProxy(upReg.url)
    try {
      const credRepo = uniqueRepo('mirrors/creds')
      await pushModelDir(model.dir, `${mirrorReg.host}/${credRepo}:v1`, { format: 'tar', creds: mirrorUser })
      await pushModelDir(model.dir, `${upReg.host}/${credRepo}:v1`, { format: 'tar', creds: upUser })
      const dir = await hostsToml(upP.host, `server = "http://${upP.host}"\n[host."http://${mirrorP.host}"]\n  capabilities = ["pull", "resolve"]\n`)
      const authDir = await tempDir('cnaifs-auth-')
      const authfile = join(authDir, 'auth.json')
      const b64 = (u: { username: string; password: string }) => Buffer.from(`${u.username}:${u.password}`).toString('base64')
      await writeFile(authfile, JSON.stringify({ auths: { [mirrorP.host]: { auth: b64(mirrorUser) }, [upP.host]: { auth: b64(upUser) } } }))
      const cref = `${upP.host}/${credRepo}:v1`

      const s = await session()
      const r = await s.run(['cat', '--authfile', authfile, '--hosts-dir', dir, cref, 'config.json'])
      expectOk(r)
      expect(r.stdout.toString()).toBe(MODEL['config.json'])
      const sent = (p: FaultProxy) => p.log.map((e) => e.headers.authorization).filter(Boolean)
      expect(sent(mirrorP)).toContain(`Basic ${b64(mirrorUser)}`)
      expect(sent(mirrorP).every((a) => a === `Basic ${b64(mirrorUser)}`)).toBe(true)
      expect(upP.log).toEqual([])

      mirrorP.set({ down: true })
      const s2 = await session()
      const r2 = await s2.run(['cat', '--authfile', authfile, '--hosts-dir', dir, cref, 'README.md'])
      expectOk(r2)
      expect(sent(upP)).toContain(`Basic ${b64(upUser)}`)
      expect(sent(upP).every((a) => a === `Basic ${b64(upUser)}`)).toBe(true)
      expect(sent(mirrorP).every((a) => a === `Basic ${b64(mirrorUser)}`)).toBe(true)
    } finally {
      await Promise.all([mirrorP.stop(), upP.stop()])
      await Promise.all([mirrorReg.stop(), upReg.stop()])
    }
  }, 90_000)
})

/** A reverse proxy that sends blob GET bodies one byte every 200 ms (everything else at full speed). */
async function startBlobTrickler(target: URL): Promise<{ host: string; stop: () => Promise<void> }> {
  const server = http.createServer((req, res) => {
    const up = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: { ...req.headers, host: target.host } }, async (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers)
      if (req.method !== 'GET' || !req.url?.includes('/blobs/')) { ur.pipe(res); return }
      const timer = setInterval(() => {
        const byte = ur.read(1) as Buffer | null
        if (byte) res.write(byte)
      }, 200)
      res.on('close', () => { clearInterval(timer); ur.destroy() })
    })
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  return { host: `127.0.0.1:${port}`, stop: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }) }
}

/**
 * How long a CLI run that does nothing takes right now: the bound "--request-timeout + 2 s" is on cnaifs' own work,
 * and on a machine shared by many jobs Node's start-up alone can take seconds.
 */
async function startupMs(): Promise<number> {
  const r = await runCli(['--version'])
  expect(r.code).toBe(0)
  return r.durationMs
}

describe('total request deadlines (--request-timeout)', () => {
  it('a trickling manifest: exit 5 within --request-timeout + 2 s, naming the host', async () => {
    const trickle = await startProxy(upstream.url, { bandwidthBytesPerSec: 1 })
    try {
      const s = await session()
      const startup = await startupMs()
      const r = await s.run(['inspect', '--request-timeout', '2', '--registry-config', 'none', `${trickle.host}/${repo}:v1`], { timeoutMs: 30_000 })
      expect(r.code, describeResult(r)).toBe(5)
      expect(r.durationMs).toBeLessThan(startup + 4000)
      expect(r.stderr).toMatch(new RegExp(`^cnaifs: manifest .*: ${trickle.host.replace(/\./g, '\\.')} was too slow sending the response body: not done within 2\\.0 s \\(--request-timeout 2\\.0 s\\)\\n$`))
    } finally {
      await trickle.stop()
    }
  })

  it('a trickling blob: cat exits 5 within --request-timeout + 2 s, for a raw and a tar layer', async () => {
    const rawRepo = uniqueRepo('mirrors/rawtrickle')
    await pushModelDir(model.dir, `${upstream.host}/${rawRepo}:v1`, { format: 'raw' })
    const t = await startBlobTrickler(new URL(upstream.url))
    try {
      // README.md is a raw layer of its own (one ranged GET of the blob); config.json sits in a tar layer (its index
      // needs the layer's head and tail first). Both are small, so the deadline is --request-timeout itself.
      for (const [r0, path] of [[rawRepo, 'README.md'], [repo, 'config.json']] as const) {
        const s = await session()
        const startup = await startupMs()
        const r = await s.run(['cat', '--request-timeout', '2', '--registry-config', 'none', `${t.host}/${r0}:v1`, path], { timeoutMs: 30_000 })
        expect(r.code, describeResult(r)).toBe(5)
        expect(r.durationMs).toBeLessThan(startup + 4000)
        expect(r.stderr).toMatch(new RegExp(`^cnaifs: blob .*${t.host.replace(/\./g, '\\.')} was too slow sending the response body`))
      }
    } finally {
      await t.stop()
    }
  }, 60_000)

  it('blobs redirected to another origin (an object store) are read there, with no credentials or host headers', async () => {
    const targetLog: Array<{ url: string; range?: string; authorization?: string; node?: string }> = []
    // The "object store": the registry under another origin (localhost instead of 127.0.0.1), logged.
    const store = await startFront((req) => {
      targetLog.push({ url: req.url ?? '', range: req.headers.range, authorization: req.headers.authorization, node: req.headers['x-node'] as string | undefined })
      return false
    })
    const front = await startFront((req, res) => {
      if (req.method !== 'GET') return false
      res.writeHead(307, { location: `http://localhost:${store.port}${req.url}` }).end()
      return true
    })
    try {
      const s = await session()
      const r = await s.run(['cat', '--registry-config', 'none', '-H', 'X-Node: n1', `${front.host}/${repo}:v1`, 'weights/model.safetensors'])
      expectOk(r)
      expect(sha256(r.stdout)).toBe(model.files['weights/model.safetensors']!.sha256)
      expect(targetLog.length).toBeGreaterThan(0)
      for (const e of targetLog) {
        expect(e.authorization).toBeUndefined()
        expect(e.node).toBeUndefined()
        expect(e.range ?? '').not.toContain(',') // one range at a time at an object store
      }
    } finally {
      await front.stop()
      await store.stop()
    }
  })

  it('a redirect target that keeps answering 401 gets its own message', async () => {
    const deny = await startFront((_req, res) => { res.writeHead(401, { 'www-authenticate': 'Basic realm="store"' }).end(); return true })
    const front = await startFront((req, res) => {
      if (req.method !== 'GET') return false
      res.writeHead(307, { location: `http://localhost:${deny.port}${req.url}` }).end()
      return true
    })
    try {
      const r = await (await session()).run(['cat', '--registry-config', 'none', `${front.host}/${repo}:v1`, 'config.json'])
      expect(r.code, describeResult(r)).toBe(3)
      expect(r.stderr).toMatch(new RegExp(`the redirect target localhost:${deny.port} answered HTTP 401 twice`))
    } finally {
      await front.stop()
      await deny.stop()
    }
  })

  it('a redirect to a file: URL gets its own message', async () => {
    const front = await startFront((_req, res) => { res.writeHead(307, { location: 'file:///etc/passwd' }).end(); return true })
    try {
      const s = await session()
      const r = await s.run(['cat', '--registry-config', 'none', `${front.host}/${repo}:v1`, 'config.json'])
      expect(r.code, describeResult(r)).not.toBe(0)
      expect(r.stderr).toMatch(/redirected to a file: URL, which is refused/)
    } finally {
      await front.stop()
    }
  })
})

describe('indexing cost', () => {
  it('a 1000-layer PAX tar model is indexed with at most one blob request per layer', async () => {
    const layers = Array.from({ length: 1000 }, (_, i) => ({
      mediaType: 'application/vnd.cncf.model.weight.v1.tar',
      data: buildTar([{ name: `shard-${i}.bin`, data: seededBytes(100 * 1024 + i, `shard-${i}`), pax: { path: `weights/${'long-directory-name-'.repeat(6)}/shard-${String(i).padStart(4, '0')}.bin` } }]),
    }))
    const bigRepo = uniqueRepo('mirrors/thousand')
    await pushArtifact(upstream.host, bigRepo, 'v1', { artifactType: 'application/vnd.cncf.model.manifest.v1+json', config: { mediaType: 'application/vnd.cncf.model.config.v1+json', data: modelConfig('thousand') }, layers })
    const counting = await startProxy(upstream.url)
    try {
      const s = await session()
      const r = await s.run(['ls', '-R', '--registry-config', 'none', `${counting.host}/${bigRepo}:v1`], { timeoutMs: 120_000 })
      expectOk(r)
      expect(r.stdout.toString().split('\n').filter((l) => l.endsWith('.bin'))).toHaveLength(1000)
      expect(counting.blobRequests().length).toBeLessThanOrEqual(1000)
      expect(counting.log.filter((e) => e.method === 'GET').length).toBeLessThanOrEqual(1001)
      // distribution answers the head and tail in one multipart/byteranges response.
      expect(counting.blobRequests()[0]!.range).toMatch(/^bytes=0-65535,\d+-\d+$/)
    } finally {
      await counting.stop()
    }
  }, 240_000)
})
