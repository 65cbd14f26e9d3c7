import { existsSync } from 'node:fs'
import { CnaifsError, UsageError } from '../../util/errors.js'
import type { Logger } from '../../util/log.js'
import type { ImageReference } from '../reference.js'
import { containerdHostsDirs, findHostDir, loadHostDir, CONTAINERD_CONFIG, type ContainerdHost } from './containerd.js'
import { emptyTls, findDockerCerts } from './docker-certs.js'
import {
  CONTAINERS_CERT_DIRS, defaultRegistriesConfPaths, loadRegistriesConf, matchRegistry, pullSources,
} from './registries-conf.js'
import type { EndpointTls, HostCapability, HostsConfig, RegistryEndpoint } from './types.js'

/** The registry's configuration refuses it (registries.conf `blocked = true`). */
export class BlockedRegistryError extends CnaifsError {
  constructor(message: string) {
    super('EBLOCKED', message)
  }
}

/** What applies to every host besides the node's configuration: the command line's flags. */
export interface EndpointDefaults {
  /** HTTP for hosts written without a scheme; undefined: HTTP for loopback hosts only. */
  plainHttp?: boolean
  insecure?: boolean
  caFile?: string
  /** `--header`: sent to every registry host of the reference (mirrors included), after the configured ones. */
  headers?: Record<string, string>
}

export interface EndpointPlan {
  /** Hosts in the order they are tried. */
  endpoints: RegistryEndpoint[]
  /** Which configuration decided: 'containerd', 'crio' or 'direct'. */
  kind: 'containerd' | 'crio' | 'direct'
  /** The file that decided (or 'no configuration'). */
  decidedBy: string
}

const ALL: HostCapability[] = ['pull', 'resolve', 'push']

/** Docker Hub is configured as docker.io (the name in references), served from registry-1.docker.io. */
export function configName(registry: string): string {
  return registry === 'registry-1.docker.io' ? 'docker.io' : registry
}

function apiHost(name: string): string {
  return name === 'docker.io' || name === 'index.docker.io' ? 'registry-1.docker.io' : name
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '')
  return h === 'localhost' || h === '::1' || /^127\./.test(h)
}

function defaultScheme(host: string, d: EndpointDefaults): 'http' | 'https' {
  return (d.plainHttp ?? isLoopbackHost(host)) ? 'http' : 'https'
}

function withDefaults(tls: EndpointTls, d: EndpointDefaults): EndpointTls {
  return {
    caFiles: d.caFile ? [...tls.caFiles, d.caFile] : tls.caFiles,
    clientPairs: tls.clientPairs,
    skipVerify: tls.skipVerify || d.insecure === true,
  }
}

function isDragonfly(headers: Record<string, string>): boolean {
  return Object.keys(headers).some((h) => h.toLowerCase() === 'x-dragonfly-registry')
}

/** The single host of a reference when nothing configures it (and for pushes). */
export function directEndpoint(ref: ImageReference, d: EndpointDefaults, tls: EndpointTls = emptyTls(), source = ''): RegistryEndpoint {
  const headers = { ...(d.headers ?? {}) }
  return {
    origin: `${defaultScheme(ref.registry, d)}://${ref.registry}`,
    apiPath: '/v2', host: ref.registry, repository: ref.repository, capabilities: ALL, upstream: true,
    headers, tls: withDefaults(tls, d), dragonfly: isDragonfly(headers), source,
  }
}

/**
 * The hosts to try for a reference, from the node's configuration:
 * - containerd (hosts.toml under the certs.d roots) when `source` is containerd, or auto and a host directory exists;
 * - CRI-O / containers-image (registries.conf) when `source` is crio, or auto and an entry matches the reference;
 * - otherwise the registry itself. `none` ignores the node's files.
 * With both configured in auto, containerd decides and the log says so (pick with --registry-config).
 */
export function planEndpoints(ref: ImageReference, config: HostsConfig, d: EndpointDefaults, log?: Logger): EndpointPlan {
  const source = config.source ?? 'auto'
  if (source === 'none') return { endpoints: [directEndpoint(ref, d)], kind: 'direct', decidedBy: 'no configuration (--registry-config none)' }
  const name = configName(ref.registry)

  const roots = config.hostsDirs ?? containerdHostsDirs(config.containerdConfig ?? CONTAINERD_CONFIG).dirs
  const hostDir = source === 'crio' ? undefined : findHostDir(roots, name)
  const conf = source === 'containerd' ? undefined : loadRegistriesConf(config.registriesConf ?? defaultRegistriesConfPaths(process.env, existsSync))
  const match = conf ? matchRegistry(conf, `${name}/${ref.repository}`) : undefined

  if (hostDir) {
    const file = loadHostDir(hostDir)
    if (match) log?.warn({ registry: name, containerd: file.source, crio: match.registry.source }, 'both containerd and CRI-O configure this registry: containerd decides (choose with --registry-config)')
    return { endpoints: containerdEndpoints(ref, name, file.hosts, file.source, d), kind: 'containerd', decidedBy: file.source }
  }
  if (match) {
    if (match.registry.blocked) {
      throw new BlockedRegistryError(`${name}/${ref.repository} is blocked by ${match.registry.source} ([[registry]] prefix "${match.registry.prefix}" has blocked = true)`)
    }
    const certDirs = config.containersCertDirs ?? CONTAINERS_CERT_DIRS
    const endpoints = pullSources(match, `${name}/${ref.repository}`, ref.digest !== undefined)
      .flatMap((s) => crioEndpoints(s.name, s.insecure, !s.mirror, match.registry.source, certDirs, d))
    return { endpoints, kind: 'crio', decidedBy: match.registry.source }
  }
  // No host directory and no registries.conf entry: the registry itself, with Docker's certificate files if any.
  const certs = source === 'crio' ? findDockerCerts(config.containersCertDirs ?? CONTAINERS_CERT_DIRS, ref.registry) : undefined
  return { endpoints: [directEndpoint(ref, d, certs?.tls, certs?.dir ?? '')], kind: 'direct', decidedBy: certs?.dir ?? 'no configuration' }
}

function containerdEndpoints(ref: ImageReference, name: string, hosts: ContainerdHost[], source: string, d: EndpointDefaults): RegistryEndpoint[] {
  return hosts.map((h) => {
    let origin: string
    let apiPath = '/v2'
    let host: string
    if (h.url === undefined) {
      host = apiHost(name)
      origin = `${defaultScheme(host, d)}://${host}`
    } else {
      const u = new URL(h.url)
      origin = u.origin
      host = u.host
      const path = u.pathname.replace(/\/+$/, '')
      // containerd: no path means /v2; a path gets /v2 appended unless override_path says it is the API root.
      if (path !== '') apiPath = h.overridePath || path.endsWith('/v2') ? path : `${path}/v2`
    }
    // containerd's isProxy: any host other than the reference's registry is a mirror and is told the namespace.
    const upstream = host === ref.registry || (name === 'docker.io' && host === 'registry-1.docker.io')
    const headers = { ...h.headers, ...(d.headers ?? {}) }
    return {
      origin, apiPath, host, repository: ref.repository, capabilities: h.capabilities, upstream,
      ...(upstream ? {} : { ns: name }),
      headers, tls: withDefaults(h.tls, d), ...(h.dialTimeoutMs !== undefined ? { dialTimeoutMs: h.dialTimeoutMs } : {}),
      dragonfly: isDragonfly(headers), source,
    }
  })
}

/** A registries.conf location (host[/path]/repository): HTTPS, or with `insecure` HTTPS without verification then HTTP. */
function crioEndpoints(location: string, insecure: boolean, upstream: boolean, source: string, certDirs: string[], d: EndpointDefaults): RegistryEndpoint[] {
  const slash = location.indexOf('/')
  if (slash <= 0) throw new UsageError(`${source}: location ${location} names no repository`)
  const host = apiHost(location.slice(0, slash))
  const repository = location.slice(slash + 1)
  const certs = findDockerCerts(certDirs, host)
  const tls = withDefaults(certs?.tls ?? emptyTls(), d)
  const headers = { ...(d.headers ?? {}) }
  const base = { apiPath: '/v2', host, repository, capabilities: ['pull', 'resolve'] as HostCapability[], upstream, headers, dragonfly: isDragonfly(headers), source }
  const scheme = defaultScheme(host, d)
  if (insecure && scheme === 'https') {
    return [
      { ...base, origin: `https://${host}`, tls: { ...tls, skipVerify: true } },
      { ...base, origin: `http://${host}`, tls },
    ]
  }
  return [{ ...base, origin: `${scheme}://${host}`, tls }]
}

/** A one-line account of a plan for the log: which file decided and the hosts in order. */
export function describePlan(plan: EndpointPlan): Record<string, unknown> {
  return {
    decidedBy: plan.decidedBy,
    hosts: plan.endpoints.map((e) => `${e.origin}${e.apiPath}/${e.repository}${e.ns ? `?ns=${e.ns}` : ''} [${e.capabilities.join(',')}]`),
  }
}
