import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { UsageError } from '../util/errors.js'

/** What we may present to a registry. `identityToken` is an OAuth2 refresh token (Docker's `<token>` user). */
export type Credential =
  | { kind: 'basic'; username: string; password: string }
  | { kind: 'identity-token'; identityToken: string }

/** Finds the credential for a registry host (host[:port]); undefined means anonymous. */
export interface CredentialStore {
  lookup(registry: string): Promise<Credential | undefined>
}

/** The on-disk shape of Docker's config.json and podman's auth.json (the parts we read). */
interface DockerConfigFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>
  credHelpers?: Record<string, string>
  credsStore?: string
}

/** `docker-credential-*` helpers answer `get` with this JSON. */
interface CredentialHelperAnswer {
  ServerURL?: string
  Username: string
  Secret: string
}

const DOCKER_HUB_KEYS = ['https://index.docker.io/v1/', 'index.docker.io', 'docker.io', 'registry-1.docker.io']

export interface CredentialStoreOptions {
  /** --username with --password-stdin: applies to `forRegistry` only. */
  explicit?: { registry: string; username: string; password: string }
  /** Files to search, in order (--authfile: that one only); default: Docker's config.json, podman's auth.json, kubelet's config.json. */
  files?: string[]
  env?: NodeJS.ProcessEnv
}

export const KUBELET_CONFIG = '/var/lib/kubelet/config.json'

export function defaultAuthFiles(env: NodeJS.ProcessEnv = process.env): string[] {
  const files: string[] = []
  if (env.REGISTRY_AUTH_FILE) files.push(env.REGISTRY_AUTH_FILE)
  files.push(join(env.DOCKER_CONFIG ?? join(env.HOME ?? homedir(), '.docker'), 'config.json'))
  if (env.XDG_RUNTIME_DIR) files.push(join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'))
  files.push(join(env.XDG_CONFIG_HOME ?? join(env.HOME ?? homedir(), '.config'), 'containers', 'auth.json'))
  // The kubelet's node-wide pull credentials (Docker's format), which node components read too.
  files.push(KUBELET_CONFIG)
  return files
}

/** Normalises an `auths` key ("https://host/v1/", "host/path") to host[:port]. */
function keyHost(key: string): string {
  const withoutScheme = key.replace(/^[a-z]+:\/\//i, '')
  return withoutScheme.split('/')[0].toLowerCase()
}

function candidates(registry: string): string[] {
  const host = registry.toLowerCase()
  return DOCKER_HUB_KEYS.includes(host) ? DOCKER_HUB_KEYS : [host]
}

export class FileCredentialStore implements CredentialStore {
  private readonly files: string[]
  private readonly explicit?: CredentialStoreOptions['explicit']
  private readonly env: NodeJS.ProcessEnv

  constructor(options: CredentialStoreOptions = {}) {
    this.env = options.env ?? process.env
    this.files = options.files ?? defaultAuthFiles(this.env)
    this.explicit = options.explicit
  }

  async lookup(registry: string): Promise<Credential | undefined> {
    if (this.explicit && this.explicit.registry.toLowerCase() === registry.toLowerCase()) {
      return { kind: 'basic', username: this.explicit.username, password: this.explicit.password }
    }
    const names = candidates(registry)
    for (const file of this.files) {
      const config = await readConfig(file)
      if (!config) continue
      const found = await fromConfig(config, names, file, this.env)
      if (found) return found
    }
    return undefined
  }
}

async function readConfig(file: string): Promise<DockerConfigFile | undefined> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch {
    return undefined // absent files are normal: most machines have only one of them
  }
  try {
    return JSON.parse(text) as DockerConfigFile
  } catch {
    throw new UsageError(`credentials file ${file} is not valid JSON`)
  }
}

async function fromConfig(config: DockerConfigFile, names: string[], file: string, env: NodeJS.ProcessEnv): Promise<Credential | undefined> {
  // A per-registry helper wins over inline auths, as in Docker.
  for (const [key, helper] of Object.entries(config.credHelpers ?? {})) {
    if (names.includes(keyHost(key))) return runHelper(helper, key, env)
  }
  for (const [key, entry] of Object.entries(config.auths ?? {})) {
    if (!names.includes(keyHost(key))) continue
    if (entry.identitytoken) return { kind: 'identity-token', identityToken: entry.identitytoken }
    if (entry.username && entry.password) return { kind: 'basic', username: entry.username, password: entry.password }
    if (entry.auth) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8')
      const colon = decoded.indexOf(':')
      if (colon < 0) throw new UsageError(`credentials file ${file}: the auth entry for ${key} is not base64 of user:password`)
      return { kind: 'basic', username: decoded.slice(0, colon), password: decoded.slice(colon + 1) }
    }
  }
  if (config.credsStore) return runHelper(config.credsStore, names[0], env, true)
  return undefined
}

function runHelper(helper: string, serverUrl: string, env: NodeJS.ProcessEnv, quietMissing = false): Promise<Credential | undefined> {
  if (!/^[a-zA-Z0-9_.-]+$/.test(helper)) throw new UsageError(`invalid credential helper name ${JSON.stringify(helper)}`)
  const program = `docker-credential-${helper}`
  return new Promise((resolve, reject) => {
    const child = execFile(program, ['get'], { env, timeout: 10_000 }, (err, stdout) => {
      if (err) {
        // Helpers answer "credentials not found" with a non-zero exit: that means anonymous.
        if (/not found/i.test(stdout) || (quietMissing && (err as NodeJS.ErrnoException).code === 'ENOENT')) return resolve(undefined)
        return reject(new UsageError(`credential helper ${program} failed for ${serverUrl}: ${(err as Error).message.split('\n')[0]}`))
      }
      try {
        const answer = JSON.parse(stdout) as CredentialHelperAnswer
        if (answer.Username === '<token>') resolve({ kind: 'identity-token', identityToken: answer.Secret })
        else resolve({ kind: 'basic', username: answer.Username, password: answer.Secret })
      } catch {
        reject(new UsageError(`credential helper ${program} returned something that is not JSON`))
      }
    })
    // A helper that exits without reading stdin (or is not installed) makes this write fail with EPIPE: that is
    // reported through the exit status above, so the stream error must not become an uncaught exception.
    child.stdin?.on('error', () => {})
    child.stdin?.end(serverUrl)
  })
}
