import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { containerdHostsDirs, findHostDir, hostDirectoryNames, loadHostDir, parseHostsToml } from '../../src/registry/hosts/containerd.js'
import { parseGoDuration } from '../../src/registry/hosts/duration.js'
import { planEndpoints, BlockedRegistryError } from '../../src/registry/hosts/endpoints.js'
import { noProxyMatches, proxyEnvFrom, proxyFor } from '../../src/registry/hosts/proxy-env.js'
import {
  explicitRegistriesConfPaths, loadRegistriesConf, matchRegistry, parseRegistriesConf, prefixMatchLength, pullSources,
} from '../../src/registry/hosts/registries-conf.js'
import { parseToml } from '../../src/registry/hosts/toml.js'
import { parseReference } from '../../src/registry/reference.js'
import { byterangesBoundary, parseByteranges } from '../../src/registry/multipart.js'
import { parseHeaderOptions, registryClientConfig } from '../../src/cli/context.js'
import { RegistryClient } from '../../src/registry/client.js'

let dir: string
beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'cnaifs-hosts-')) })
afterAll(async () => { await rm(dir, { recursive: true, force: true }) })

async function write(path: string, text: string): Promise<string> {
  const full = join(dir, path)
  await mkdir(join(full, '..'), { recursive: true })
  await writeFile(full, text)
  return full
}

describe('containerd config.toml', () => {
  it('reads config_path of the 1.x CRI plugin (config version 2), a ":"-separated list', async () => {
    const file = await write('c1/config.toml', `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d:/etc/docker/certs.d:/opt/certs"\n`)
    expect(containerdHostsDirs(file)).toEqual({ dirs: ['/etc/containerd/certs.d', '/etc/docker/certs.d', '/opt/certs'], source: file })
  })
  it('reads config_path of the 2.x images plugin (config version 3)', async () => {
    const file = await write('c2/config.toml', `version = 3\n[plugins]\n  [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = '/x/certs.d'\n`)
    expect(containerdHostsDirs(file).dirs).toEqual(['/x/certs.d'])
  })
  it('falls back to containerd\'s default without the file or the key', async () => {
    expect(containerdHostsDirs(join(dir, 'absent.toml')).dirs).toEqual(['/etc/containerd/certs.d', '/etc/docker/certs.d'])
    const file = await write('c3/config.toml', `version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\nsnapshotter = "overlayfs"\n`)
    expect(containerdHostsDirs(file).dirs).toEqual(['/etc/containerd/certs.d', '/etc/docker/certs.d'])
  })
  it('names a broken file in its error', async () => {
    const file = await write('c4/config.toml', `version = 2\n[plugins\n`)
    expect(() => containerdHostsDirs(file)).toThrow(new RegExp(`${file} is not valid TOML`))
  })
})

describe('containerd hosts.toml', () => {
  it('looks a host up as host_port_, host:port, then _default, root by root', async () => {
    expect(hostDirectoryNames('reg.example:5000')).toEqual(['reg.example_5000_', 'reg.example:5000', '_default'])
    expect(hostDirectoryNames('docker.io')).toEqual(['docker.io', '_default'])
    await mkdir(join(dir, 'r1', 'reg.example:5000'), { recursive: true })
    await mkdir(join(dir, 'r1', 'reg.example_5000_'), { recursive: true })
    await mkdir(join(dir, 'r2', '_default'), { recursive: true })
    await mkdir(join(dir, 'r2', 'other.example'), { recursive: true })
    expect(findHostDir([join(dir, 'r1'), join(dir, 'r2')], 'reg.example:5000')).toBe(join(dir, 'r1', 'reg.example_5000_'))
    expect(findHostDir([join(dir, 'r1'), join(dir, 'r2')], 'other.example')).toBe(join(dir, 'r2', 'other.example'))
    expect(findHostDir([join(dir, 'r1'), join(dir, 'r2')], 'third.example')).toBe(join(dir, 'r2', '_default'))
    expect(findHostDir([join(dir, 'r1')], 'third.example')).toBeUndefined()
  })

  it('keeps [host."URL"] entries in file order, then the server with the top-level fields', () => {
    const doc = parseToml(`
server = "https://registry.example"
ca = "/etc/ca/server.pem"
skip_verify = false

[host."http://mirror-b:5000"]
  capabilities = ["pull"]
  dial_timeout = "1500ms"
  [host."http://mirror-b:5000".header]
    X-Dragonfly-Registry = "https://registry.example"
    x-multi = ["a", "b"]

[host."https://mirror-a/cache"]
  capabilities = ["pull", "resolve"]
  ca = ["ca1.pem", "/abs/ca2.pem"]
  client = [["client.cert", "client.key"], ["both.pem", ""]]
  skip_verify = true

[host."https://mirror-c/v2/special"]
  override_path = true
`, 'hosts.toml')
    const hosts = parseHostsToml(doc, 'hosts.toml', '/etc/containerd/certs.d/registry.example')
    expect(hosts.map((h) => h.url)).toEqual(['http://mirror-b:5000', 'https://mirror-a/cache', 'https://mirror-c/v2/special', 'https://registry.example'])
    expect(hosts[0]).toMatchObject({ capabilities: ['pull'], dialTimeoutMs: 1500, headers: { 'x-dragonfly-registry': 'https://registry.example', 'x-multi': 'a, b' } })
    expect(hosts[1]!.tls).toEqual({
      caFiles: ['/etc/containerd/certs.d/registry.example/ca1.pem', '/abs/ca2.pem'],
      clientPairs: [['/etc/containerd/certs.d/registry.example/client.cert', '/etc/containerd/certs.d/registry.example/client.key'], ['/etc/containerd/certs.d/registry.example/both.pem', '']],
      skipVerify: true,
    })
    expect(hosts[2]!.overridePath).toBe(true)
    expect(hosts[3]).toMatchObject({ capabilities: ['pull', 'resolve', 'push'], tls: { caFiles: ['/etc/ca/server.pem'], skipVerify: false } })
  })

  it('refuses wrong types and unknown capabilities with the file and key named', () => {
    expect(() => parseHostsToml(parseToml(`[host."https://m"]\nskip_verify = "yes"\n`, 'h'), 'h.toml', '/d')).toThrow(/h\.toml: \[host\."https:\/\/m"\] skip_verify must be true or false/)
    expect(() => parseHostsToml(parseToml(`[host."https://m"]\ncapabilities = ["pull", "fly"]\n`, 'h'), 'h.toml', '/d')).toThrow(/unknown capability "fly"/)
    expect(() => parseHostsToml(parseToml(`[host."ftp://m"]\n`, 'h'), 'h.toml', '/d')).toThrow(/only http and https/)
    expect(() => parseHostsToml(parseToml(`[host."https://m"]\ndial_timeout = "soon"\n`, 'h'), 'h.toml', '/d')).toThrow(/not a duration/)
  })

  it('without hosts.toml, uses the directory\'s Docker certificate files for the server', async () => {
    const d = join(dir, 'certs', 'secure.example')
    await write('certs/secure.example/ca.crt', 'x')
    await write('certs/secure.example/client.cert', 'x')
    await write('certs/secure.example/client.key', 'x')
    expect(loadHostDir(d)).toEqual({
      source: d,
      hosts: [{ capabilities: ['pull', 'resolve', 'push'], headers: {}, overridePath: false, tls: { caFiles: [join(d, 'ca.crt')], clientPairs: [[join(d, 'client.cert'), join(d, 'client.key')]], skipVerify: false } }],
    })
    await write('certs/lonely.example/client.cert', 'x')
    expect(() => loadHostDir(join(dir, 'certs', 'lonely.example'))).toThrow(/client certificate without its key client\.key/)
  })

  it('plans mirrors with ?ns=, their headers and paths, and the server last', async () => {
    await write('plan/docker.io/hosts.toml', `
server = "https://registry-1.docker.io"
[host."http://127.0.0.1:4001"]
  capabilities = ["pull", "resolve"]
  [host."http://127.0.0.1:4001".header]
    X-Dragonfly-Registry = "https://index.docker.io"
[host."https://cache.example/prefix"]
  capabilities = ["pull"]
`)
    const plan = planEndpoints(parseReference('docker.io/library/llama:v1'), { hostsDirs: [join(dir, 'plan')], source: 'containerd' }, { headers: { 'x-extra': '1' } })
    expect(plan.kind).toBe('containerd')
    expect(plan.decidedBy).toBe(join(dir, 'plan', 'docker.io', 'hosts.toml'))
    expect(plan.endpoints.map((e) => [e.origin, e.apiPath, e.ns, e.upstream, e.dragonfly, e.capabilities.join(',')])).toEqual([
      ['http://127.0.0.1:4001', '/v2', 'docker.io', false, true, 'pull,resolve'],
      ['https://cache.example', '/prefix/v2', 'docker.io', false, false, 'pull'],
      ['https://registry-1.docker.io', '/v2', undefined, true, false, 'pull,resolve,push'],
    ])
    expect(plan.endpoints[0]!.headers).toEqual({ 'x-dragonfly-registry': 'https://index.docker.io', 'x-extra': '1' })
    expect(plan.endpoints[2]!.repository).toBe('library/llama')
  })

  it('Go durations', () => {
    expect(parseGoDuration('5s', 'x')).toBe(5000)
    expect(parseGoDuration('1m30s', 'x')).toBe(90_000)
    expect(parseGoDuration('250ms', 'x')).toBe(250)
    expect(() => parseGoDuration('5', 'x')).toThrow(/not a duration/)
  })
})

describe('registries.conf', () => {
  const conf = (text: string) => ({ registries: parseRegistriesConf(parseToml(text, 'r.conf'), 'r.conf'), files: ['r.conf'] })

  it('matches the longest prefix at a path boundary, and wildcards on subdomains', () => {
    expect(prefixMatchLength('example.com/foo/bar', 'example.com/foo')).toBe(15)
    expect(prefixMatchLength('example.com/foobar', 'example.com/foo')).toBe(-1)
    expect(prefixMatchLength('a.b.example.com/x', '*.example.com')).toBe(15)
    expect(prefixMatchLength('example.com/x', '*.example.com')).toBe(-1)
    const c = conf(`
[[registry]]
prefix = "example.com"
location = "example.com"
[[registry]]
prefix = "example.com/team"
location = "internal.example:5000/mirror/team"
[[registry.mirror]]
location = "cache.local/team"
[[registry]]
prefix = "*.corp.example"
blocked = true
`)
    expect(matchRegistry(c, 'example.com/team/model')!.registry.location).toBe('internal.example:5000/mirror/team')
    expect(matchRegistry(c, 'example.com/other/model')!.registry.location).toBe('example.com')
    expect(matchRegistry(c, 'eu.corp.example/x')!.registry.blocked).toBe(true)
    expect(matchRegistry(c, 'elsewhere.io/x')).toBeUndefined()
  })

  it('rewrites the location for mirrors in order then the primary, honouring pull-from-mirror and mirror-by-digest-only', () => {
    const c = conf(`
[[registry]]
prefix = "example.com/team"
location = "primary.example/team"
[[registry.mirror]]
location = "m1.local/cache/team"
[[registry.mirror]]
location = "m2.local/team"
insecure = true
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "m3.local/team"
pull-from-mirror = "tag-only"
[[registry]]
prefix = "pinned.example"
location = "pinned.example"
mirror-by-digest-only = true
[[registry.mirror]]
location = "pm.local"
`)
    const name = 'example.com/team/model'
    const m = matchRegistry(c, name)!
    expect(pullSources(m, name, false).map((s) => s.name)).toEqual(['m1.local/cache/team/model', 'm3.local/team/model', 'primary.example/team/model'])
    expect(pullSources(m, name, true).map((s) => [s.name, s.insecure, s.mirror])).toEqual([
      ['m1.local/cache/team/model', false, true], ['m2.local/team/model', true, true], ['primary.example/team/model', false, false],
    ])
    const p = matchRegistry(c, 'pinned.example/a/b')!
    expect(pullSources(p, 'pinned.example/a/b', false).map((s) => s.name)).toEqual(['pinned.example/a/b'])
    expect(pullSources(p, 'pinned.example/a/b', true).map((s) => s.name)).toEqual(['pm.local/a/b', 'pinned.example/a/b'])
  })

  it('applies drop-ins in name order, a later prefix replacing an earlier one, and reads v1 block/insecure lists', async () => {
    const main = await write('rc/registries.conf', `unqualified-search-registries = ["docker.io"]\n[[registry]]\nprefix = "a.example"\nlocation = "a.example"\n[[registry]]\nlocation = "b.example"\n`)
    await write('rc/registries.conf.d/20-b.conf', `[[registry]]\nlocation = "b.example"\nblocked = true\n`)
    await write('rc/registries.conf.d/10-c.conf', `[registries.insecure]\nregistries = ["c.example"]\n`)
    await write('rc/registries.conf.d/README', `not a drop-in`)
    const loaded = loadRegistriesConf(explicitRegistriesConfPaths(main))!
    expect(loaded.files).toEqual([main, join(dir, 'rc/registries.conf.d/10-c.conf'), join(dir, 'rc/registries.conf.d/20-b.conf')])
    expect(loaded.registries.map((r) => [r.prefix, r.blocked, r.insecure])).toEqual([['a.example', false, false], ['c.example', false, true], ['b.example', true, false]])
    expect(loadRegistriesConf({ file: join(dir, 'nothing.conf'), dropInDirs: [] })).toBeUndefined()
  })

  it('refuses malformed entries with the file named', () => {
    expect(() => conf(`[[registry]]\nprefix = "*.x.example"\nlocation = "y.example"\n`)).toThrow(/r\.conf: \[\[registry\]\] #1 a wildcard prefix/)
    expect(() => conf(`[[registry]]\nlocation = "https://y.example"\n`)).toThrow(/must not have a scheme/)
    expect(() => conf(`[[registry]]\nlocation = "y.example"\n[[registry.mirror]]\nlocation = "m"\npull-from-mirror = "sometimes"\n`)).toThrow(/pull-from-mirror must be/)
    expect(() => conf(`[[registry]]\nlocation = "y.example"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = "m"\npull-from-mirror = "tag-only"\n`)).toThrow(/cannot be combined/)
  })

  it('plans a blocked registry as an error naming the file', async () => {
    const file = await write('rb/registries.conf', `[[registry]]\nprefix = "blocked.example"\nlocation = "blocked.example"\nblocked = true\n`)
    expect(() => planEndpoints(parseReference('blocked.example/m:v1'), { source: 'crio', registriesConf: { file, dropInDirs: [] } }, {}))
      .toThrow(BlockedRegistryError)
    expect(() => planEndpoints(parseReference('blocked.example/m:v1'), { source: 'crio', registriesConf: { file, dropInDirs: [] } }, {}))
      .toThrow(new RegExp(`blocked\\.example/m is blocked by ${file}`))
  })

  it('an insecure location is tried over HTTPS without verification, then HTTP', async () => {
    const file = await write('ri/registries.conf', `[[registry]]\nprefix = "reg.example"\nlocation = "reg.example"\ninsecure = true\n`)
    const plan = planEndpoints(parseReference('reg.example/m:v1'), { source: 'crio', registriesConf: { file, dropInDirs: [] }, containersCertDirs: [] }, {})
    expect(plan.endpoints.map((e) => [e.origin, e.tls.skipVerify])).toEqual([['https://reg.example', true], ['http://reg.example', false]])
  })

  it('auto: containerd decides when both configure a registry, CRI-O when only it does', async () => {
    const file = await write('both/registries.conf', `[[registry]]\nprefix = "both.example"\nlocation = "crio.example"\n[[registry]]\nprefix = "only-crio.example"\nlocation = "crio.example"\n`)
    await write('both/certs.d/both.example/hosts.toml', `server = "https://containerd.example"\n`)
    const hosts = { hostsDirs: [join(dir, 'both/certs.d')], registriesConf: { file, dropInDirs: [] }, containersCertDirs: [] }
    expect(planEndpoints(parseReference('both.example/m:v1'), hosts, {}).endpoints.map((e) => e.origin)).toEqual(['https://containerd.example'])
    expect(planEndpoints(parseReference('both.example/m:v1'), { ...hosts, source: 'crio' }, {}).endpoints.map((e) => e.origin)).toEqual(['https://crio.example'])
    expect(planEndpoints(parseReference('only-crio.example/m:v1'), hosts, {}).kind).toBe('crio')
    expect(planEndpoints(parseReference('neither.example/m:v1'), hosts, {}).kind).toBe('direct')
    expect(planEndpoints(parseReference('both.example/m:v1'), { ...hosts, source: 'none' }, {}).endpoints.map((e) => e.origin)).toEqual(['https://both.example'])
  })
})

describe('proxies from the environment', () => {
  it('takes the upper-case names first', () => {
    expect(proxyEnvFrom({ HTTPS_PROXY: 'http://p:1', https_proxy: 'http://q:2', no_proxy: 'x' })).toEqual({ httpsProxy: 'http://p:1', noProxy: 'x' })
  })
  it('picks by scheme, never proxies loopback, and honours NO_PROXY as Go does', () => {
    const env = { httpProxy: 'proxy:3128', httpsProxy: 'http://sproxy:3128', noProxy: '.internal, exact.example, 10.0.0.0/8, port.example:5000, [::2]' }
    expect(proxyFor(new URL('https://reg.example/v2/'), env)).toBe('http://sproxy:3128')
    expect(proxyFor(new URL('http://reg.example/v2/'), env)).toBe('http://proxy:3128')
    expect(proxyFor(new URL('http://127.0.0.1:5000/v2/'), env)).toBeUndefined()
    expect(proxyFor(new URL('http://localhost:5000/v2/'), env)).toBeUndefined()
    expect(proxyFor(new URL('https://a.internal/v2/'), env)).toBeUndefined()
    expect(proxyFor(new URL('https://internal/v2/'), env)).toBe('http://sproxy:3128')
    expect(proxyFor(new URL('https://exact.example/v2/'), env)).toBeUndefined()
    expect(proxyFor(new URL('https://sub.exact.example/v2/'), env)).toBeUndefined()
    expect(proxyFor(new URL('https://10.1.2.3/v2/'), env)).toBeUndefined()
    expect(proxyFor(new URL('https://11.1.2.3/v2/'), env)).toBe('http://sproxy:3128')
    expect(proxyFor(new URL('http://port.example:5000/v2/'), env)).toBeUndefined()
    expect(proxyFor(new URL('http://port.example:5001/v2/'), env)).toBe('http://proxy:3128')
    expect(noProxyMatches('anything', '443', '*')).toBe(true)
  })
})

describe('multipart/byteranges', () => {
  it('parses parts by their Content-Range, binary data containing the boundary included', () => {
    const b = 'SEP'
    const data1 = Buffer.from('ab--SEPcd')
    const data2 = Buffer.from('xyz')
    const body = Buffer.concat([
      Buffer.from(`--${b}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-8/100\r\n\r\n`), data1,
      Buffer.from(`\r\n--${b}\r\nContent-Range: bytes 97-99/100\r\n\r\n`), data2, Buffer.from(`\r\n--${b}--\r\n`),
    ])
    expect(byterangesBoundary('multipart/byteranges; boundary=SEP')).toBe('SEP')
    expect(byterangesBoundary('multipart/byteranges; boundary="S E P"')).toBe('S E P')
    expect(byterangesBoundary('application/octet-stream')).toBeUndefined()
    expect(parseByteranges(body, b)).toEqual([{ start: 0, bytes: data1 }, { start: 97, bytes: data2 }])
    expect(() => parseByteranges(body.subarray(0, 90), b)).toThrow()
  })
})

describe('registry options', () => {
  it('--header NAME:VALUE, repeatable, refuses headers cnaifs sets itself', () => {
    expect(parseHeaderOptions(['X-Team: ml', 'x-team:infra', 'X-Empty:'])).toEqual({ 'x-team': 'ml, infra', 'x-empty': '' })
    expect(() => parseHeaderOptions(['novalue'])).toThrow(/NAME:VALUE/)
    expect(() => parseHeaderOptions(['Authorization: Bearer x'])).toThrow(/set by cnaifs itself/)
    expect(() => parseHeaderOptions(['Range: bytes=0-1'])).toThrow(/set by cnaifs itself/)
  })
  it('builds a plain-data config that a worker turns into the same client', () => {
    const config = registryClientConfig({
      header: ['X-A: 1'], authfile: '/tmp/auth.json', requestTimeout: '5', hostsDir: '/a:/b', registryConfig: 'containerd', dragonflyPrefetchPriority: '3',
    })
    const client = new RegistryClient({ ...config, proxy: { httpsProxy: 'http://p:1' } })
    const copy = structuredClone(client.config)
    expect(copy).toEqual(client.config)
    expect(copy).toMatchObject({
      headers: { 'x-a': '1' }, credentialSource: { files: ['/tmp/auth.json'] }, requestTimeoutMs: 5000,
      hosts: { source: 'containerd', hostsDirs: ['/a', '/b'] }, proxy: { httpsProxy: 'http://p:1' }, dragonflyPrefetchPriority: 3,
    })
    expect(new RegistryClient(copy).config).toEqual(copy)
    void client.close()
  })
})
