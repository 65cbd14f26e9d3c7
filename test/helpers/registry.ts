/**
 * Runs a real CNCF distribution registry (the Debian `docker-registry` package, distribution 2.8)
 * as a child process for integration tests.
 *
 * Each registry gets its own temp dir holding the YAML config, the storage root, the log file and,
 * for basic auth, the htpasswd file. The packaged /etc/docker/registry/config.yml is never used
 * (it is broken for our purposes: its htpasswd path points at a directory, storage is a shared system dir).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, existsSync, openSync, rmSync } from 'node:fs'
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

const execFileAsync = promisify(execFile)

export const REGISTRY_BINARY = '/usr/bin/docker-registry'

const STARTUP_TIMEOUT_MS = 10_000
const STOP_GRACE_MS = 3_000

export type RegistryAuth =
  | { kind: 'basic'; username: string; password: string }
  | { kind: 'token'; realm: string; service: string; issuer: string; rootCertBundlePath: string }

export interface RegistryProcess {
  /** http://127.0.0.1:PORT */
  url: string
  /** 127.0.0.1:PORT */
  host: string
  storageDir: string
  logFile: string
  /** Stops the registry (SIGTERM, SIGKILL after 3 s) and deletes its temp dir. Idempotent. */
  stop(): Promise<void>
  /** Stops the process and starts it again on the SAME port and storage (registry-down-then-back tests). */
  restart(): Promise<void>
}

// Safety net: if the test runner exits without calling stop() (crash, unhandled error), do not leave
// registry processes or temp dirs behind. Only synchronous work is possible in an 'exit' handler.
const liveChildren = new Set<ChildProcess>()
const liveTempDirs = new Set<string>()
let exitHookInstalled = false
function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.on('exit', () => {
    for (const child of liveChildren) child.kill('SIGKILL')
    for (const dir of liveTempDirs) rmSync(dir, { recursive: true, force: true })
  })
}

/** Finds a free TCP port on 127.0.0.1 by binding port 0 and closing again (small race, fine for tests). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo
      srv.close(() => resolve(port))
    })
  })
}

/** Last `bytes` of a log file, for error messages. */
export async function logTail(file: string, bytes = 4096): Promise<string> {
  try {
    const fh = await open(file, 'r')
    try {
      const { size } = await fh.stat()
      const start = Math.max(0, size - bytes)
      const buf = Buffer.alloc(size - start)
      await fh.read(buf, 0, buf.length, start)
      return buf.toString('utf8')
    } finally {
      await fh.close()
    }
  } catch (err) {
    return `<could not read ${file}: ${(err as Error).message}>`
  }
}

/** YAML double-quoted scalar; JSON string syntax is valid YAML for the characters we ever write. */
const q = (s: string): string => JSON.stringify(s)

function renderConfig(o: { port: number; storageDir: string; auth?: RegistryAuth; htpasswdPath?: string; proxyRemoteUrl?: string }): string {
  const lines = [
    'version: 0.1',
    'log:',
    // info level gives one "response completed" line per request (plus the access log); cheap enough and
    // invaluable when an integration test fails.
    '  level: info',
    '  formatter: text',
    '  accesslog:',
    '    disabled: false',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${q(o.storageDir)}`,
    '  delete:',
    '    enabled: true',
    // No background goroutine deleting "stale" uploads under our feet; no storage.cache (no redis,
    // and no in-memory blob descriptor cache that could mask deletes between restarts).
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: 127.0.0.1:${o.port}`,
    // A fixed secret avoids the "No HTTP secret provided" warning and keeps upload state valid across restart().
    `  secret: ${q(randomBytes(16).toString('hex'))}`,
    '  headers:',
    '    X-Content-Type-Options: [nosniff]',
    'health:',
    '  storagedriver:',
    '    enabled: false',
  ]
  // A pull-through cache of another registry (distribution's proxy mode); it refuses pushes.
  if (o.proxyRemoteUrl) lines.push('proxy:', `  remoteurl: ${q(o.proxyRemoteUrl)}`)
  if (o.auth?.kind === 'basic') {
    lines.push('auth:', '  htpasswd:', '    realm: cnaifs-test', `    path: ${q(o.htpasswdPath!)}`)
  } else if (o.auth?.kind === 'token') {
    lines.push(
      'auth:',
      '  token:',
      `    realm: ${q(o.auth.realm)}`,
      `    service: ${q(o.auth.service)}`,
      `    issuer: ${q(o.auth.issuer)}`,
      `    rootcertbundle: ${q(o.auth.rootCertBundlePath)}`,
    )
  }
  return lines.join('\n') + '\n'
}

/** One GET /v2/ probe; resolves the status code or undefined if the connection failed. */
function probe(url: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const req = http.get(`${url}/v2/`, { timeout: 1000, agent: false }, (res) => {
      res.resume()
      resolve(res.statusCode)
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(undefined))
  })
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS)
  try {
    await exited
  } finally {
    clearTimeout(timer)
    liveChildren.delete(child)
  }
}

export async function startRegistry(opts: { auth?: RegistryAuth; proxyRemoteUrl?: string } = {}): Promise<RegistryProcess> {
  if (!existsSync(REGISTRY_BINARY)) {
    throw new Error('docker-registry not installed: apt-get install docker-registry')
  }
  installExitHook()

  const dir = await mkdtemp(join(tmpdir(), 'cnaifs-registry-'))
  liveTempDirs.add(dir)
  const storageDir = join(dir, 'storage')
  const logFile = join(dir, 'registry.log')
  const configPath = join(dir, 'config.yml')
  let child: ChildProcess | undefined
  let stopped = false

  try {
    await mkdir(storageDir)
    let htpasswdPath: string | undefined
    if (opts.auth?.kind === 'basic') {
      // distribution's htpasswd auth only accepts bcrypt entries, hence -B.
      const { stdout } = await execFileAsync('htpasswd', ['-Bbn', opts.auth.username, opts.auth.password])
      htpasswdPath = join(dir, 'htpasswd')
      await writeFile(htpasswdPath, stdout.trim() + '\n')
    }
    const port = await freePort()
    const host = `127.0.0.1:${port}`
    const url = `http://${host}`
    await writeFile(configPath, renderConfig({ port, storageDir, auth: opts.auth, htpasswdPath, proxyRemoteUrl: opts.proxyRemoteUrl }))

    // REGISTRY_* variables override the YAML config; never let the caller's environment leak in.
    const env: NodeJS.ProcessEnv = {}
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('REGISTRY_')) env[k] = v

    const launch = async (): Promise<void> => {
      const fd = openSync(logFile, 'a')
      let c: ChildProcess
      try {
        c = spawn(REGISTRY_BINARY, ['serve', configPath], { stdio: ['ignore', fd, fd], env })
      } finally {
        closeSync(fd) // the child has its own copy
      }
      child = c
      liveChildren.add(c)
      let exitInfo: string | undefined
      let spawnError: Error | undefined
      c.once('error', (err) => (spawnError = err))
      c.once('exit', (code, signal) => {
        exitInfo = `exited with code ${code} signal ${signal}`
        liveChildren.delete(c)
      })

      const deadline = Date.now() + STARTUP_TIMEOUT_MS
      for (;;) {
        if (spawnError || exitInfo) {
          throw new Error(
            `docker-registry on ${host} failed to start (${spawnError?.message ?? exitInfo}); log tail:\n${await logTail(logFile)}`,
          )
        }
        const status = await probe(url)
        // 401 is "up" too: auth-enabled registries challenge even /v2/.
        if (status === 200 || status === 401) return
        if (Date.now() > deadline) {
          await stopChild(c)
          throw new Error(
            `docker-registry on ${host} did not answer GET /v2/ within ${STARTUP_TIMEOUT_MS} ms` +
              ` (last status ${status ?? 'connection failed'}); log tail:\n${await logTail(logFile)}`,
          )
        }
        await sleep(50)
      }
    }

    await launch()

    return {
      url,
      host,
      storageDir,
      logFile,
      async stop() {
        if (stopped) return
        stopped = true
        if (child) await stopChild(child)
        await rm(dir, { recursive: true, force: true })
        liveTempDirs.delete(dir)
      },
      async restart() {
        if (stopped) throw new Error('registry already stopped')
        if (child) await stopChild(child)
        await launch()
      },
    }
  } catch (err) {
    if (child) await stopChild(child)
    await rm(dir, { recursive: true, force: true })
    liveTempDirs.delete(dir)
    throw err
  }
}
