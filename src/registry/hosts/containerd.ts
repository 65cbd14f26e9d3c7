import { existsSync } from 'node:fs'
import { isAbsolute, join } from 'node:path'
import { UsageError } from '../../util/errors.js'
import { parseGoDuration } from './duration.js'
import { emptyTls, isDirectory, loadDockerCertDir } from './docker-certs.js'
import { readTomlFile, TomlFields, isTable, type TomlTable } from './toml.js'
import type { EndpointTls, HostCapability } from './types.js'

export const CONTAINERD_CONFIG = '/etc/containerd/config.toml'
/** containerd's default when its CRI plugin has no config_path. */
export const DEFAULT_CERTS_ROOTS = ['/etc/containerd/certs.d', '/etc/docker/certs.d']

/** The CRI plugin tables that hold `registry.config_path`: containerd 1.x (config version 2) and 2.x (version 3). */
const CRI_REGISTRY_TABLES = ['io.containerd.grpc.v1.cri', 'io.containerd.cri.v1.images']

/** One host as a hosts.toml describes it, before it is turned into an endpoint for a repository. */
export interface ContainerdHost {
  /** The URL as written: scheme://host[:port][/path]. Undefined for the default server of the registry. */
  url?: string
  capabilities: HostCapability[]
  tls: EndpointTls
  headers: Record<string, string>
  overridePath: boolean
  dialTimeoutMs?: number
}

export interface ContainerdHostsFile {
  /** The hosts.toml (or, with none, the certificate directory) that decided. */
  source: string
  /** `[host."…"]` entries in file order, then the server (always last, `url` undefined when not written). */
  hosts: ContainerdHost[]
}

/**
 * The certs.d roots from containerd's config.toml: `config_path` of the CRI registry table (a `:`-separated
 * list), or containerd's default when the file or the key is absent.
 */
export function containerdHostsDirs(configFile: string = CONTAINERD_CONFIG): { dirs: string[]; source: string } {
  const doc = readTomlFile(configFile)
  if (!doc) return { dirs: DEFAULT_CERTS_ROOTS, source: 'default' }
  const plugins = isTable(doc.plugins) ? doc.plugins : {}
  for (const name of CRI_REGISTRY_TABLES) {
    const plugin = plugins[name]
    if (!isTable(plugin) || !isTable(plugin.registry)) continue
    const configPath = new TomlFields(configFile, `[plugins."${name}".registry] `).string(plugin.registry, 'config_path')
    if (configPath) return { dirs: configPath.split(':').filter(Boolean), source: configFile }
  }
  return { dirs: DEFAULT_CERTS_ROOTS, source: 'default' }
}

/** containerd names a host:port directory `host_port_` first (ports cannot be in Windows paths), then as written. */
export function hostDirectoryNames(host: string): string[] {
  const colon = host.lastIndexOf(':')
  const names: string[] = []
  if (colon > 0 && !host.endsWith(']')) names.push(`${host.slice(0, colon)}_${host.slice(colon + 1)}_`)
  names.push(host, '_default')
  return names
}

/** The directory that configures `registry` (the name in the reference: docker.io, host:port), as containerd finds it. */
export function findHostDir(roots: string[], registry: string): string | undefined {
  for (const root of roots) {
    for (const name of hostDirectoryNames(registry)) {
      const dir = join(root, name)
      if (isDirectory(dir)) return dir
    }
  }
  return undefined
}

/** Reads a host directory: its hosts.toml, or Docker's certificate files for the server when it has none. */
export function loadHostDir(dir: string): ContainerdHostsFile {
  const file = join(dir, 'hosts.toml')
  if (existsSync(file)) {
    const doc = readTomlFile(file)
    return { source: file, hosts: parseHostsToml(doc ?? {}, file, dir) }
  }
  const tls = loadDockerCertDir(dir) ?? emptyTls()
  return { source: dir, hosts: [{ capabilities: ['pull', 'resolve', 'push'], tls, headers: {}, overridePath: false }] }
}

/** hosts.toml: `[host."URL"]` tables in file order, then the top-level server with the top-level fields. */
export function parseHostsToml(doc: TomlTable, file: string, dir: string): ContainerdHost[] {
  const hosts: ContainerdHost[] = []
  const hostTables = doc.host
  if (hostTables !== undefined) {
    if (!isTable(hostTables)) throw new UsageError(`${file}: host must be tables written [host."https://mirror.example"]`)
    for (const [url, t] of Object.entries(hostTables)) {
      if (!isTable(t)) throw new UsageError(`${file}: host.${JSON.stringify(url)} must be a table`)
      hosts.push(parseHost(t, url, file, dir, `[host."${url}"] `))
    }
  }
  const server = new TomlFields(file, '').string(doc, 'server')
  hosts.push(parseHost(doc, server, file, dir, ''))
  return hosts
}

function parseHost(t: TomlTable, url: string | undefined, file: string, dir: string, where: string): ContainerdHost {
  const f = new TomlFields(file, where)
  if (url !== undefined) {
    let u: URL
    try {
      u = new URL(url)
    } catch {
      throw new UsageError(`${file}: ${where || 'server '}${JSON.stringify(url)} is not a URL (write it as https://host[:port][/path])`)
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new UsageError(`${file}: ${where || 'server '}${url}: only http and https hosts are supported`)
  }
  const capabilities = f.strings(t, 'capabilities')
  for (const c of capabilities ?? []) {
    if (c !== 'pull' && c !== 'resolve' && c !== 'push') throw new UsageError(`${file}: ${where}capabilities: unknown capability ${JSON.stringify(c)} (pull, resolve, push)`)
  }
  const resolvePath = (p: string): string => (isAbsolute(p) ? p : join(dir, p))
  const tls: EndpointTls = {
    caFiles: (f.strings(t, 'ca') ?? []).map(resolvePath),
    clientPairs: clientPairs(t.client, file, where).map(([c, k]) => [resolvePath(c), k ? resolvePath(k) : ''] as [string, string]),
    skipVerify: f.boolean(t, 'skip_verify') ?? false,
  }
  const headers: Record<string, string> = {}
  const headerTable = f.table(t, 'header')
  for (const name of Object.keys(headerTable ?? {})) {
    const values = new TomlFields(file, `${where}header.`).strings(headerTable!, name)!
    headers[name.toLowerCase()] = values.join(', ')
  }
  const dial = f.string(t, 'dial_timeout')
  return {
    url,
    capabilities: (capabilities as HostCapability[] | undefined) ?? ['pull', 'resolve', 'push'],
    tls,
    headers,
    overridePath: f.boolean(t, 'override_path') ?? false,
    ...(dial !== undefined ? { dialTimeoutMs: parseGoDuration(dial, `${file}: ${where}dial_timeout`) } : {}),
  }
}

/** `client`: a path, a list of paths, or a list of [cert, key] pairs (containerd accepts all three). */
function clientPairs(v: unknown, file: string, where: string): Array<[string, string]> {
  if (v === undefined) return []
  const bad = (): never => { throw new UsageError(`${file}: ${where}client must be a path, a list of paths, or a list of [cert, key] pairs`) }
  if (typeof v === 'string') return [[v, '']]
  if (!Array.isArray(v)) return bad()
  return v.map((item) => {
    if (typeof item === 'string') return [item, ''] as [string, string]
    if (Array.isArray(item) && item.length >= 1 && item.length <= 2 && item.every((x) => typeof x === 'string')) return [item[0], item[1] ?? ''] as [string, string]
    return bad()
  })
}
