import { homedir } from 'node:os'
import { join } from 'node:path'
import { RegistryClient, type RegistryClientConfig, type RegistryObserver } from '../registry/client.js'
import { explicitRegistriesConfPaths } from '../registry/hosts/registries-conf.js'
import type { HostsSource } from '../registry/hosts/types.js'
import { parseReference, type ImageReference } from '../registry/reference.js'
import { IndexStore } from '../index/store.js'
import { CompressedLayers } from '../compressed/layers.js'
import { UsageError } from '../util/errors.js'
import { createLogger, type Logger } from '../util/log.js'

/** Options every command that talks to a registry accepts (see addRegistryOptions). */
export interface RegistryCliOptions {
  plainHttp?: boolean
  insecure?: boolean
  caFile?: string
  username?: string
  passwordStdin?: boolean
  authfile?: string
  header?: string[]
  requestTimeout?: string
  registryConfig?: string
  hostsDir?: string
  containerdConfig?: string
  registriesConf?: string
  dragonflyPrefetchPriority?: string
}

export interface GlobalCliOptions {
  cacheDir?: string
  logLevel?: string
}

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.CNAIFS_CACHE_DIR) return env.CNAIFS_CACHE_DIR
  if (process.getuid?.() === 0) return '/var/lib/cnaifs'
  return join(env.XDG_CACHE_HOME ?? join(env.HOME ?? homedir(), '.cache'), 'cnaifs')
}

export interface CommandContext {
  log: Logger
  cacheDir: string
  store: IndexStore
  client: RegistryClient
  ref: ImageReference
  /** Indexes and reads tar+gzip / tar+zstd layers (pass `compressed.indexLayer` to openModel). */
  compressed: CompressedLayers
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '')
}

let stdinPassword: Promise<string> | undefined

export async function createContext(reference: string, global: GlobalCliOptions, reg: RegistryCliOptions, observer?: RegistryObserver, log?: Logger): Promise<CommandContext> {
  const logger = log ?? createLogger(global.logLevel ?? 'warn')
  const ref = parseReference(reference)
  let explicit: { registry: string; username: string; password: string } | undefined
  if (reg.passwordStdin && !reg.username) throw new UsageError('--password-stdin needs --username')
  if (reg.username) {
    if (!reg.passwordStdin) throw new UsageError('--username needs --password-stdin (passwords are never taken on the command line)')
    stdinPassword ??= readStdin()
    explicit = { registry: ref.registry, username: reg.username, password: await stdinPassword }
  }
  const client = new RegistryClient({ ...registryClientConfig(reg, explicit), log: logger, observer })
  const cacheDir = global.cacheDir ?? defaultCacheDir()
  const compressed = new CompressedLayers({ cacheDir, read: (digest, offset, length, signal) => client.readBlobRange(ref, digest, offset, length, { signal }), log: logger })
  return { log: logger, cacheDir, store: new IndexStore(cacheDir), client, ref, compressed }
}

/** HTTP header names (RFC 9110 tokens) and the headers a caller must never set: they belong to the client. */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const RESERVED_HEADERS = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'range', 'authorization'])

/** `--header NAME:VALUE` (repeatable) as oras takes it; a repeated name is sent with its values joined by ", ". */
export function parseHeaderOptions(values: string[] = []): Record<string, string> | undefined {
  if (!values.length) return undefined
  const out: Record<string, string> = {}
  for (const v of values) {
    const colon = v.indexOf(':')
    const name = colon > 0 ? v.slice(0, colon).trim() : ''
    const value = colon > 0 ? v.slice(colon + 1).trim() : ''
    if (!name || !HEADER_NAME.test(name)) throw new UsageError(`--header ${JSON.stringify(v)}: write it as NAME:VALUE`)
    if (/[\r\n\0]/.test(value)) throw new UsageError(`--header ${name}: the value must be one line`)
    const lower = name.toLowerCase()
    if (RESERVED_HEADERS.has(lower)) throw new UsageError(`--header ${name}: this header is set by cnaifs itself${lower === 'authorization' ? ' (credentials come from --username/--password-stdin or an auth file)' : ''}`)
    out[lower] = out[lower] !== undefined ? `${out[lower]}, ${value}` : value
  }
  return out
}

/** The plain-data client config the registry options describe (the daemon and its workers rebuild clients from it). */
export function registryClientConfig(reg: RegistryCliOptions, explicit?: { registry: string; username: string; password: string }): RegistryClientConfig {
  const timeoutMs = reg.requestTimeout ? Number(reg.requestTimeout) * 1000 : undefined
  if (timeoutMs !== undefined && !(timeoutMs > 0)) throw new UsageError(`--request-timeout must be a positive number of seconds`)
  const priority = reg.dragonflyPrefetchPriority === undefined ? undefined : Number(reg.dragonflyPrefetchPriority)
  if (priority !== undefined && !(Number.isInteger(priority) && priority >= 0 && priority <= 6)) throw new UsageError('--dragonfly-prefetch-priority must be an integer from 0 to 6')
  const hostsDirs = reg.hostsDir?.split(':').filter(Boolean)
  if (reg.hostsDir !== undefined && !hostsDirs?.length) throw new UsageError('--hosts-dir needs at least one directory')
  return {
    credentialSource: { explicit, ...(reg.authfile ? { files: [reg.authfile] } : {}) },
    plainHttp: reg.plainHttp,
    insecure: reg.insecure,
    caFile: reg.caFile,
    requestTimeoutMs: timeoutMs,
    headers: parseHeaderOptions(reg.header),
    hosts: {
      source: (reg.registryConfig ?? 'auto') as HostsSource,
      ...(hostsDirs ? { hostsDirs } : {}),
      ...(reg.containerdConfig ? { containerdConfig: reg.containerdConfig } : {}),
      ...(reg.registriesConf ? { registriesConf: explicitRegistriesConfPaths(reg.registriesConf) } : {}),
    },
    ...(priority !== undefined ? { dragonflyPrefetchPriority: priority } : {}),
  }
}
