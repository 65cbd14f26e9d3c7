import { isIP } from 'node:net'
import { BlockList } from 'node:net'

/** HTTP_PROXY, HTTPS_PROXY and NO_PROXY as read when the client was made (plain data for worker threads). */
export interface ProxyEnv {
  httpProxy?: string
  httpsProxy?: string
  noProxy?: string
}

/** The upper-case name wins over the lower-case one, as in Go's net/http (containerd, CRI-O). */
export function proxyEnvFrom(env: NodeJS.ProcessEnv = process.env): ProxyEnv {
  const pick = (name: string): string | undefined => (env[name.toUpperCase()] || env[name.toLowerCase()]) || undefined
  const out: ProxyEnv = {}
  const http = pick('http_proxy')
  const https = pick('https_proxy')
  const no = pick('no_proxy')
  if (http) out.httpProxy = http
  if (https) out.httpsProxy = https
  if (no) out.noProxy = no
  return out
}

/**
 * The proxy URL for a request, or undefined to connect directly. Go's rules, which containerd and CRI-O follow:
 * HTTPS_PROXY for https URLs, HTTP_PROXY for http ones, a proxy without a scheme is http://; localhost and loopback
 * addresses never go through a proxy; NO_PROXY is a comma-separated list of `*`, IP addresses, CIDR ranges and
 * domain names (a name matches itself and its subdomains, `.name` and `*.name` only subdomains), each optionally
 * with `:port`.
 */
export function proxyFor(target: URL, env: ProxyEnv): string | undefined {
  const raw = target.protocol === 'https:' ? env.httpsProxy : target.protocol === 'http:' ? env.httpProxy : undefined
  if (!raw) return undefined
  const host = target.hostname.replace(/^\[|\]$/g, '').toLowerCase()
  const port = target.port || (target.protocol === 'https:' ? '443' : '80')
  if (host === 'localhost' || host.endsWith('.localhost') || isLoopbackIp(host)) return undefined
  if (env.noProxy && noProxyMatches(host, port, env.noProxy)) return undefined
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`
}

function isLoopbackIp(host: string): boolean {
  const v = isIP(host)
  if (v === 4) return host.startsWith('127.')
  if (v === 6) return host === '::1' || /^::ffff:127\./i.test(host)
  return false
}

export function noProxyMatches(host: string, port: string, noProxy: string): boolean {
  for (let entry of noProxy.split(/[,\s]+/).map((e) => e.trim().toLowerCase()).filter(Boolean)) {
    if (entry === '*') return true
    if (entry.includes('/')) {
      if (cidrContains(entry, host)) return true
      continue
    }
    let entryPort: string | undefined
    const m = /^(\[[^\]]+\]|[^:]+|[0-9a-f:]+)(?::(\d+))?$/.exec(entry)
    if (m && isIP(entry) !== 6) { entry = m[1]!; entryPort = m[2] }
    entry = entry.replace(/^\[|\]$/g, '')
    if (entryPort && entryPort !== port) continue
    if (isIP(entry)) {
      if (entry === host) return true
      continue
    }
    if (entry.startsWith('*.')) entry = entry.slice(1)
    if (entry.startsWith('.')) {
      if (host.endsWith(entry)) return true
      continue
    }
    if (host === entry || host.endsWith('.' + entry)) return true
  }
  return false
}

function cidrContains(cidr: string, host: string): boolean {
  const [net, bitsText] = cidr.split('/')
  const family = isIP(net ?? '')
  const hostFamily = isIP(host)
  if (!family || family !== hostFamily) return false
  const bits = Number(bitsText)
  if (!Number.isInteger(bits)) return false
  const list = new BlockList()
  try {
    list.addSubnet(net!, bits, family === 4 ? 'ipv4' : 'ipv6')
  } catch {
    return false
  }
  return list.check(host, family === 4 ? 'ipv4' : 'ipv6')
}
