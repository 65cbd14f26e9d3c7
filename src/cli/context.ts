import { homedir } from 'node:os'
import { join } from 'node:path'
import { RegistryClient, type RegistryObserver } from '../registry/client.js'
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
  requestTimeout?: string
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
  const timeoutMs = reg.requestTimeout ? Number(reg.requestTimeout) * 1000 : undefined
  if (timeoutMs !== undefined && !(timeoutMs > 0)) throw new UsageError(`--request-timeout must be a positive number of seconds`)
  const client = new RegistryClient({
    credentialSource: { explicit },
    plainHttp: reg.plainHttp,
    insecure: reg.insecure,
    caFile: reg.caFile,
    requestTimeoutMs: timeoutMs,
    log: logger,
    observer,
  })
  const cacheDir = global.cacheDir ?? defaultCacheDir()
  const compressed = new CompressedLayers({ cacheDir, read: (digest, offset, length, signal) => client.readBlobRange(ref, digest, offset, length, { signal }), log: logger })
  return { log: logger, cacheDir, store: new IndexStore(cacheDir), client, ref, compressed }
}
