/**
 * Helpers for end-to-end tests of the real CLI: run `node bin/cnaifs` as a child process, make model
 * directories with deterministic content, hash files, build tar layers by hand and push hand-made
 * manifests (for artifacts `cnaifs push` would never produce).
 */
import { execFile, spawn } from 'node:child_process'
import { createCipheriv, createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { FileCredentialStore } from '../../src/registry/credentials.js'
import { RegistryClient } from '../../src/registry/client.js'
import { OCI_MANIFEST } from '../../src/registry/media-types.js'
import { parseReference } from '../../src/registry/reference.js'
import { pushDirectory } from '../../src/pack/push.js'

const execFileAsync = promisify(execFile)

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url))
export const CLI_BIN = join(REPO_ROOT, 'bin', 'cnaifs')

// ---------------------------------------------------------------------------------------------------------
// Temp dirs

const tempDirs = new Set<string>()

/** A fresh temp dir, removed by cleanupTempDirs(). */
export async function tempDir(prefix = 'cnaifs-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  tempDirs.add(dir)
  return dir
}

/**
 * Removes this process's temp dirs. A mount still inside one (a test that failed before its teardown) is
 * detached first, so rm never walks into it; mounts of other test files, which may be running at the same
 * time, are never touched.
 */
export async function cleanupTempDirs(): Promise<void> {
  const mounts = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter(Boolean)
    .map((l) => l.split(' ')[4]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
  for (const mp of mounts) {
    if ([...tempDirs].some((d) => mp.startsWith(d + '/'))) await execFileAsync('fusermount', ['-uz', mp]).catch(() => undefined)
  }
  await Promise.all([...tempDirs].map((d) => rm(d, { recursive: true, force: true })))
  tempDirs.clear()
}

let uniqueCounter = 0
/** A repository name no other test (or earlier run against the same registry) uses. */
export function uniqueRepo(prefix: string): string {
  const slug = prefix.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '')
  return `e2e/${slug}-${process.pid}-${Date.now().toString(36)}-${++uniqueCounter}`
}

// ---------------------------------------------------------------------------------------------------------
// Running the CLI

export interface CliResult {
  /** Exit code; 128 + signal number when killed (e.g. by the timeout). */
  code: number
  stdout: Buffer
  stderr: string
  durationMs: number
  timedOut: boolean
}

export interface RunCliOptions {
  /** Written to stdin (stdin is always closed, so --password-stdin never waits). */
  input?: string
  /** Merged over the isolated environment (a value of '' still sets the variable). */
  env?: Record<string, string>
  /** SIGKILL after this long; default 30 s. */
  timeoutMs?: number
}

let isolatedHome: Promise<string> | undefined

/**
 * The environment every CLI run starts from: the test process' environment without any credential
 * source of the developer's machine (HOME, DOCKER_CONFIG, REGISTRY_AUTH_FILE, XDG dirs point at an
 * empty dir), so "no credentials" really means none.
 */
async function baseEnv(): Promise<Record<string, string>> {
  isolatedHome ??= tempDir('cnaifs-home-')
  const home = await isolatedHome
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined) continue
    if (['REGISTRY_AUTH_FILE', 'DOCKER_CONFIG', 'CNAIFS_CACHE_DIR', 'CNAIFS_LOG_LEVEL'].includes(k)) continue
    env[k] = v
  }
  Object.assign(env, {
    HOME: home,
    XDG_CONFIG_HOME: join(home, '.config'),
    XDG_RUNTIME_DIR: join(home, 'run'),
    XDG_CACHE_HOME: join(home, '.cache'),
    // Background daemons log here instead of /var/log/cnaifs (a test that checks the default sets it to '').
    CNAIFS_LOG_DIR: join(home, 'logs'),
  })
  return env
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 }

export async function runCli(args: string[], opts: RunCliOptions = {}): Promise<CliResult> {
  const env = { ...(await baseEnv()), ...opts.env }
  const began = performance.now()
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI_BIN, ...args], { cwd: REPO_ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    const err: Buffer[] = []
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, opts.timeoutMs ?? 30_000)
    child.stdout.on('data', (c: Buffer) => out.push(c))
    child.stderr.on('data', (c: Buffer) => err.push(c))
    child.stdin.on('error', () => {}) // the CLI may exit before reading its stdin
    child.stdin.end(opts.input ?? '')
    child.once('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.once('close', (code, signal) => {
      clearTimeout(timer)
      resolve({
        code: code ?? 128 + (SIGNALS[signal ?? ''] ?? 0),
        stdout: Buffer.concat(out),
        stderr: Buffer.concat(err).toString('utf8'),
        durationMs: performance.now() - began,
        timedOut,
      })
    })
  })
}

/** Formats a result for assertion messages. */
export function describeResult(r: CliResult): string {
  const text = r.stdout.length > 2000 ? `${r.stdout.subarray(0, 2000).toString()}…` : r.stdout.toString()
  return `exit ${r.code}${r.timedOut ? ' (timed out)' : ''} after ${Math.round(r.durationMs)} ms\n--- stdout\n${text}\n--- stderr\n${r.stderr}`
}

// ---------------------------------------------------------------------------------------------------------
// Content

/** Deterministic pseudo-random bytes: AES-128-CTR keystream keyed by the seed. */
export function seededBytes(size: number, seed: string | number): Buffer {
  const key = createHash('sha256').update(String(seed)).digest().subarray(0, 16)
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16))
  return Buffer.concat([cipher.update(Buffer.alloc(size)), cipher.final()])
}

/** Deterministic bytes that deflate codes with Huffman tables and matches (not stored blocks). */
export function textish(size: number, seed: string): Buffer {
  const r = seededBytes(size, seed)
  const words = ['tensor', 'layer', 'weight', 'bias', 'attention', 'mlp', 'norm', '0.125', '-3.5e-2', '\n']
  const out = Buffer.alloc(size)
  let p = 0
  for (let i = 0; p < size; i++) {
    const b = r[i % size]!
    if (b < 96) out[p++] = 97 + (b % 26)
    else for (const c of Buffer.from(words[b % words.length]! + ' ')) if (p < size) out[p++] = c
  }
  return out
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex')
}

/** Hex sha256 of a file, streamed. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

/**
 * What goes in a model dir, by relative path ('/'-separated, nested dirs are created):
 * a size (random content seeded by the path), a string or Buffer (exact content), or an object.
 */
export type ModelFileSpec = number | string | Buffer | { size: number; seed?: string | number; mode?: number }

export interface ModelDir {
  dir: string
  /** Per path: size and hex sha256 of what was written. */
  files: Record<string, { size: number; sha256: string }>
}

export async function makeModelDir(spec: Record<string, ModelFileSpec>, seed: string | number = 'cnaifs'): Promise<ModelDir> {
  const dir = await tempDir('cnaifs-model-')
  const files: ModelDir['files'] = {}
  for (const [path, s] of Object.entries(spec)) {
    let data: Buffer
    let mode: number | undefined
    if (typeof s === 'number') data = seededBytes(s, `${seed}:${path}`)
    else if (typeof s === 'string') data = Buffer.from(s)
    else if (Buffer.isBuffer(s)) data = s
    else {
      data = seededBytes(s.size, s.seed ?? `${seed}:${path}`)
      mode = s.mode
    }
    const abs = join(dir, ...path.split('/'))
    await mkdir(dirname(abs), { recursive: true })
    await writeFile(abs, data)
    if (mode !== undefined) await chmod(abs, mode)
    files[path] = { size: data.length, sha256: sha256(data) }
  }
  return { dir, files }
}

// ---------------------------------------------------------------------------------------------------------
// Tar building

export interface TarHeaderSpec {
  name: string
  size?: number
  /** '0' file, '1' hard link, '2' symlink, '5' directory, 'x' PAX, 'L' GNU long name … */
  type?: string
  mode?: number
  uid?: number
  gid?: number
  mtime?: number
  linkname?: string
  prefix?: string
  /** Raw bytes for the 12-byte size field (e.g. base-256), instead of octal `size`. */
  sizeField?: Buffer
  /** 'ustar' (POSIX, default) or 'gnu' */
  magic?: 'ustar' | 'gnu'
}

/** One 512-byte header block with a correct checksum. */
export function tarHeader(h: TarHeaderSpec): Buffer {
  const b = Buffer.alloc(512)
  const put = (offset: number, width: number, s: string) => {
    const bytes = Buffer.from(s, 'utf8')
    if (bytes.length > width) throw new Error(`tar field at ${offset} too long: ${s}`)
    bytes.copy(b, offset)
  }
  const octal = (v: number, width: number) => v.toString(8).padStart(width - 1, '0') + '\0'
  put(0, 100, h.name)
  put(100, 8, octal(h.mode ?? (h.type === '5' ? 0o755 : 0o644), 8))
  put(108, 8, octal(h.uid ?? 0, 8))
  put(116, 8, octal(h.gid ?? 0, 8))
  if (h.sizeField) h.sizeField.copy(b, 124, 0, 12)
  else put(124, 12, octal(h.size ?? 0, 12))
  put(136, 12, octal(h.mtime ?? 1_700_000_000, 12))
  put(156, 1, h.type ?? '0')
  put(157, 100, h.linkname ?? '')
  if (h.magic === 'gnu') put(257, 8, 'ustar  \0')
  else {
    put(257, 6, 'ustar\0')
    put(263, 2, '00')
  }
  if (h.prefix) put(345, 155, h.prefix)
  b.fill(0x20, 148, 156)
  let sum = 0
  for (const byte of b) sum += byte
  put(148, 8, sum.toString(8).padStart(6, '0') + '\0 ')
  return b
}

export function tarPad(size: number): Buffer {
  return Buffer.alloc((512 - (size % 512)) % 512)
}

/** A PAX record "<len> key=value\n" whose length counts itself. */
export function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`
  const len = Buffer.byteLength(body)
  let total = len + 1
  while (String(total).length + len !== total) total = String(total).length + len
  return `${total}${body}`
}

export type TarMember =
  | { name: string; data: Buffer; mode?: number; uid?: number; gid?: number; mtime?: number; pax?: Record<string, string> }
  | { name: string; type: '5'; mode?: number }
  | { name: string; type: '1' | '2'; linkname: string }

/** A tar archive of the given members (PAX headers where asked), ended by two zero blocks. */
export function buildTar(members: TarMember[]): Buffer {
  const parts: Buffer[] = []
  for (const m of members) {
    if ('data' in m) {
      if (m.pax) {
        const body = Buffer.from(Object.entries(m.pax).map(([k, v]) => paxRecord(k, v)).join(''))
        parts.push(tarHeader({ name: `PaxHeaders/${m.name}`.slice(0, 99), size: body.length, type: 'x' }), body, tarPad(body.length))
      }
      const size = m.pax?.size !== undefined ? 0 : m.data.length
      parts.push(tarHeader({ name: m.name, size, mode: m.mode, uid: m.uid, gid: m.gid, mtime: m.mtime }), m.data, tarPad(m.data.length))
    } else if (m.type === '5') {
      parts.push(tarHeader({ name: m.name, type: '5', mode: m.mode }))
    } else {
      parts.push(tarHeader({ name: m.name, type: m.type, linkname: m.linkname }))
    }
  }
  parts.push(Buffer.alloc(1024))
  return Buffer.concat(parts)
}

/** Runs GNU tar (`tar -c -f - ARGS…`) and returns the archive. */
export async function gnuTar(args: string[]): Promise<Buffer> {
  const { stdout } = await execFileAsync('tar', ['-c', '-f', '-', ...args], { encoding: 'buffer', maxBuffer: 256 * 1024 * 1024 })
  return stdout
}

// ---------------------------------------------------------------------------------------------------------
// Pushing hand-made artifacts

export interface HandLayer {
  mediaType: string
  data: Buffer
  annotations?: Record<string, string>
}

export interface HandArtifact {
  artifactType?: string
  config: { mediaType: string; data: Buffer }
  layers: HandLayer[]
  annotations?: Record<string, string>
}

export interface PushedArtifact {
  /** host/repo:tag */
  ref: string
  /** host/repo@digest */
  pinned: string
  digest: string
  manifest: Buffer
  layerDigests: string[]
}

export interface PushCredentials {
  username: string
  password: string
}

/** Pushes blobs and an OCI manifest exactly as given (through RegistryClient, as a producer would). */
export async function pushArtifact(host: string, repo: string, tag: string, a: HandArtifact, creds?: PushCredentials): Promise<PushedArtifact> {
  const ref = parseReference(`${host}/${repo}:${tag}`)
  const client = new RegistryClient({
    credentials: new FileCredentialStore({ files: [], env: {}, explicit: creds ? { registry: ref.registry, ...creds } : undefined }),
    plainHttp: true,
    retries: 1,
  })
  try {
    const descriptor = (mediaType: string, data: Buffer, annotations?: Record<string, string>) => ({
      mediaType, digest: `sha256:${sha256(data)}`, size: data.length, ...(annotations ? { annotations } : {}),
    })
    const config = descriptor(a.config.mediaType, a.config.data)
    const layers = a.layers.map((l) => descriptor(l.mediaType, l.data, l.annotations))
    await client.pushBlob(ref, config.digest, config.size, a.config.data)
    for (const [i, l] of a.layers.entries()) await client.pushBlob(ref, layers[i]!.digest, l.data.length, l.data)
    const manifest = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      ...(a.artifactType ? { artifactType: a.artifactType } : {}),
      config,
      layers,
      ...(a.annotations ? { annotations: a.annotations } : {}),
    }))
    const digest = await client.putManifest(ref, tag, manifest, OCI_MANIFEST)
    return { ref: `${host}/${repo}:${tag}`, pinned: `${host}/${repo}@${digest}`, digest, manifest, layerDigests: layers.map((l) => l.digest) }
  } finally {
    await client.close()
  }
}

/** A minimal model config blob of the current (camelCase) spelling. */
export function modelConfig(name: string, extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(JSON.stringify({
    descriptor: { name, createdAt: '2026-01-02T03:04:05Z' },
    config: { architecture: 'transformer', format: 'safetensors', paramSize: '1b', ...extra },
    modelfs: { type: 'layers', diffIds: [] },
  }))
}

/**
 * Pushes a directory in-process with the same packer as `cnaifs push` (for test setup: saves a CLI start;
 * the CLI's own push is tested separately). Returns the manifest digest.
 */
export async function pushModelDir(dir: string, reference: string, opts: { format?: 'raw' | 'tar'; legacy?: boolean; name?: string; creds?: PushCredentials } = {}): Promise<string> {
  const ref = parseReference(reference)
  const client = new RegistryClient({
    credentials: new FileCredentialStore({ files: [], env: {}, explicit: opts.creds ? { registry: ref.registry, ...opts.creds } : undefined }),
    plainHttp: true,
    retries: 1,
  })
  try {
    const result = await pushDirectory(client, ref, dir, { format: opts.format ?? 'raw', legacy: opts.legacy, name: opts.name })
    return result.digest
  } finally {
    await client.close()
  }
}
