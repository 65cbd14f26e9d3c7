/**
 * A minimal Docker registry token service (the Bearer flow of the distribution auth spec), so that
 * cnaifs' token authentication can be tested against the real registry.
 *
 * Flow: the registry answers 401 with `WWW-Authenticate: Bearer realm="<url>",service="...",scope="..."`;
 * the client calls `GET <realm>?service=...&scope=repository:NAME:pull` with Basic credentials and
 * gets back an RS256 JWT. distribution 2.8 (`auth.token`) verifies it by:
 *   - taking the signing certificate from the JWT header's `x5c` (base64 DER, leaf first) and verifying
 *     that chain against `rootcertbundle` (we use one self-signed cert as both leaf and root);
 *   - checking iss == issuer, aud contains service, exp/nbf (60 s leeway), and the `access` claim.
 */
import { execFile } from 'node:child_process'
import { X509Certificate, createPrivateKey, createSign, randomBytes, type KeyObject } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import http from 'node:http'
import type net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

const execFileAsync = promisify(execFile)

export interface TokenService {
  /** The realm, e.g. http://127.0.0.1:PORT/token */
  url: string
  service: string
  issuer: string
  /** PEM certificate the registry's `auth.token.rootcertbundle` must point at. */
  rootCertBundlePath: string
  /** Number of HTTP requests received (any path, any outcome). */
  requests: number
  stop(): Promise<void>
}

export interface TokenAccess {
  type: string
  name: string
  actions: string[]
}

const b64url = (data: Buffer | string): string => Buffer.from(data).toString('base64url')

/** Signs an RS256 JWT with the given key, embedding the certificate chain as `x5c`. */
export function signJwt(claims: object, key: KeyObject, x5c: string[]): string {
  const header = { typ: 'JWT', alg: 'RS256', x5c }
  const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`
  const signature = createSign('RSA-SHA256').update(signingInput).sign(key)
  return `${signingInput}.${b64url(signature)}`
}

/**
 * Parses `scope` query values. Each value may hold several space-separated scopes (OAuth2 style);
 * each scope is `type:name:actions`. The name is everything between the first and last colon so that
 * names with a registry port (`repository:host:5000/foo:pull`, sent by old clients) survive.
 */
export function parseScopes(values: string[]): TokenAccess[] {
  const out: TokenAccess[] = []
  for (const value of values) {
    for (const scope of value.split(' ').filter(Boolean)) {
      const first = scope.indexOf(':')
      const last = scope.lastIndexOf(':')
      if (first <= 0 || last <= first) continue
      out.push({
        type: scope.slice(0, first),
        name: scope.slice(first + 1, last),
        actions: scope.slice(last + 1).split(',').filter(Boolean),
      })
    }
  }
  return out
}

function parseBasic(header: string | undefined): { username: string; password: string } | undefined {
  const m = /^Basic\s+(\S+)$/i.exec(header ?? '')
  if (!m) return undefined
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  if (colon < 0) return undefined
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) }
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: http.OutgoingHttpHeaders = {}): void {
  const data = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), ...headers })
  res.end(data)
}

export async function startTokenService(opts: {
  username: string
  password: string
  expiresInSeconds?: number
}): Promise<TokenService> {
  const expiresIn = opts.expiresInSeconds ?? 300
  const service = 'cnaifs-test-registry'
  const issuer = 'cnaifs-test-token-issuer'

  const dir = await mkdtemp(join(tmpdir(), 'cnaifs-token-'))
  const keyPath = join(dir, 'key.pem')
  const certPath = join(dir, 'cert.pem')
  try {
    // Self-signed cert: it is the whole chain (x5c) and the registry's root bundle at once.
    await execFileAsync('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-sha256', '-days', '7',
      '-subj', '/CN=cnaifs test token issuer',
      '-keyout', keyPath, '-out', certPath,
    ])
  } catch (err) {
    await rm(dir, { recursive: true, force: true })
    throw new Error(`openssl failed to create the token signing certificate: ${(err as Error).message}`)
  }
  const key = createPrivateKey(await readFile(keyPath))
  const x5c = [new X509Certificate(await readFile(certPath)).raw.toString('base64')]

  const sockets = new Set<net.Socket>()
  const server = http.createServer()
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })

  let port = 0
  const svc: TokenService = {
    url: '', // filled in once listening
    service,
    issuer,
    rootCertBundlePath: certPath,
    requests: 0,
    async stop() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve())
        for (const s of sockets) s.destroy()
      })
      await rm(dir, { recursive: true, force: true })
    },
  }

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    svc.requests++
    req.resume() // ignore any body
    const url = new URL(req.url ?? '/', `http://127.0.0.1:${port}`)
    if (url.pathname !== '/token') return sendJson(res, 404, { errors: [{ code: 'NOT_FOUND', message: 'not found' }] })
    if (req.method !== 'GET') {
      return sendJson(res, 405, { errors: [{ code: 'UNSUPPORTED', message: 'only GET is supported' }] }, { allow: 'GET' })
    }

    // Anonymous requests are refused too: this service exists to test credentialed token auth.
    const creds = parseBasic(req.headers.authorization)
    if (!creds || creds.username !== opts.username || creds.password !== opts.password) {
      return sendJson(
        res,
        401,
        { errors: [{ code: 'UNAUTHORIZED', message: 'invalid credentials' }] },
        { 'www-authenticate': 'Basic realm="cnaifs-test-token-service"' },
      )
    }
    // Be strict about `service`: a client must echo the one from the registry's challenge.
    const requestedService = url.searchParams.get('service')
    if (requestedService !== service) {
      return sendJson(res, 400, {
        errors: [{ code: 'INVALID_REQUEST', message: `unknown service ${JSON.stringify(requestedService)}, want ${service}` }],
      })
    }

    const now = Math.floor(Date.now() / 1000)
    const claims = {
      iss: issuer,
      sub: creds.username,
      aud: service,
      exp: now + expiresIn,
      nbf: now,
      iat: now,
      jti: randomBytes(16).toString('hex'),
      // An authenticated user is granted whatever was asked for: permission policy is not under test.
      access: parseScopes(url.searchParams.getAll('scope')),
    }
    const token = signJwt(claims, key, x5c)
    sendJson(res, 200, {
      token,
      access_token: token,
      expires_in: expiresIn,
      issued_at: new Date(now * 1000).toISOString(),
    })
  })

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => resolve())
    })
  } catch (err) {
    await rm(dir, { recursive: true, force: true })
    throw err
  }
  port = (server.address() as net.AddressInfo).port
  svc.url = `http://127.0.0.1:${port}/token`
  return svc
}
