import { readFileSync } from 'node:fs'
import { rootCertificates } from 'node:tls'
import { Agent, ProxyAgent, type Dispatcher } from 'undici'
import { UsageError } from '../util/errors.js'
import { proxyFor, type ProxyEnv } from './hosts/proxy-env.js'
import type { EndpointTls } from './hosts/types.js'

export interface TransportOptions {
  /** Connections per origin: parallel ranged GETs need several. */
  connections: number
  /** Idle time allowed between body chunks (the total deadline is the client's, see deadline.ts). */
  bodyIdleMs: number
  /** Connect timeout for hosts that do not set their own (hosts.toml dial_timeout). */
  connectTimeoutMs: number
  proxy: ProxyEnv
}

const NO_TLS: EndpointTls = { caFiles: [], clientPairs: [], skipVerify: false }

/**
 * The keep-alive connection pools of a client: one per (proxy, TLS settings, connect timeout), so hosts with their
 * own CA, client certificate or `skip_verify` never share a pool with others, and HTTP(S)_PROXY / NO_PROXY decide
 * per URL whether a request goes through a proxy (CONNECT for https, absolute-form requests for http, as Go does).
 */
export class Transport {
  private readonly pools = new Map<string, Dispatcher>()
  private readonly pemCache = new Map<string, Buffer>()

  constructor(private readonly options: TransportOptions) {}

  dispatcherFor(url: string | URL, tls: EndpointTls = NO_TLS, dialTimeoutMs?: number): Dispatcher {
    const target = typeof url === 'string' ? new URL(url) : url
    const proxy = proxyFor(target, this.options.proxy)
    const https = target.protocol === 'https:'
    const connectTimeout = dialTimeoutMs ?? this.options.connectTimeoutMs
    const key = JSON.stringify([proxy ?? '', https && proxy ? 'tunnel' : '', https ? tls : NO_TLS, connectTimeout])
    let pool = this.pools.get(key)
    if (pool) return pool
    const tlsOptions = https ? this.tlsOptions(tls) : {}
    const common = {
      connections: this.options.connections,
      keepAliveTimeout: 30_000,
      // Response headers are bounded by the client's own request deadline; undici only watches for stalled bodies.
      headersTimeout: 0,
      bodyTimeout: this.options.bodyIdleMs,
    }
    pool = proxy
      ? new ProxyAgent({ ...common, uri: proxy, proxyTunnel: https, requestTls: { ...tlsOptions, timeout: connectTimeout }, proxyTls: { timeout: connectTimeout } })
      : new Agent({ ...common, connect: { ...tlsOptions, timeout: connectTimeout } })
    this.pools.set(key, pool)
    return pool
  }

  /** Drops a pool that misbehaves (see RegistryClient.call); the next request to its hosts makes a new one. */
  discard(pool: Dispatcher): void {
    for (const [key, p] of this.pools) if (p === pool) this.pools.delete(key)
    void pool.destroy().catch(() => {})
  }

  async close(): Promise<void> {
    const pools = [...this.pools.values()]
    this.pools.clear()
    await Promise.all(pools.map((p) => p.close().catch(() => {})))
  }

  private tlsOptions(tls: EndpointTls): { rejectUnauthorized: boolean; ca?: Array<string | Buffer>; cert?: Buffer; key?: Buffer } {
    const out: { rejectUnauthorized: boolean; ca?: Array<string | Buffer>; cert?: Buffer; key?: Buffer } = { rejectUnauthorized: !tls.skipVerify }
    // Node replaces its roots with `ca`: give the system's too, since a private CA is trusted in addition to them.
    if (tls.caFiles.length) out.ca = [...rootCertificates, ...tls.caFiles.map((f) => this.pem(f, 'CA certificate'))]
    const pair = tls.clientPairs[0]
    if (pair) {
      out.cert = this.pem(pair[0], 'client certificate')
      out.key = this.pem(pair[1] || pair[0], 'client key')
      if (!out.key.includes('PRIVATE KEY-----')) {
        throw new UsageError(pair[1]
          ? `the client key ${pair[1]} is not a PEM private key`
          : `the client certificate ${pair[0]} holds no private key: give the key too, as client = [["${pair[0]}", "KEY"]]`)
      }
    }
    return out
  }

  private pem(file: string, what: string): Buffer {
    let bytes = this.pemCache.get(file)
    if (!bytes) {
      try {
        bytes = readFileSync(file)
      } catch (err) {
        throw new UsageError(`cannot read the ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
      }
      this.pemCache.set(file, bytes)
    }
    return bytes
  }
}
