import type { Logger } from '../util/log.js'
import type { Credential, CredentialStore } from './credentials.js'
import { AuthError, RegistryError } from './errors.js'
import { parseWwwAuthenticate, type AuthChallenge } from './www-authenticate.js'

/** The token endpoint's answer (distribution token spec); `access_token` is the OAuth2 spelling. */
interface TokenResponse {
  token?: string
  access_token?: string
  expires_in?: number
  issued_at?: string
}

/**
 * One request to a token service, made by the client (its proxies, TLS settings and request deadline apply); the
 * body is read whole.
 */
export type TokenFetch = (url: URL, init: { method: 'GET' | 'POST'; headers: Record<string, string>; body?: string }) => Promise<{ status: number; text: string }>

interface CachedToken {
  header: string
  expiresAt: number
}

/** Tokens are refreshed this long before they expire, so a read never starts with a token about to lapse. */
const REFRESH_MARGIN_MS = 20_000
/** The token spec's default lifetime when `expires_in` is absent. */
const DEFAULT_TOKEN_SECONDS = 60

/**
 * Turns a registry's challenge into an Authorization header: Basic from the credential store, or Bearer from
 * the token service named in the challenge, cached per registry and scope until shortly before expiry.
 */
export class Authenticator {
  private readonly challenges = new Map<string, AuthChallenge>()
  private readonly tokens = new Map<string, CachedToken>()
  private readonly inflight = new Map<string, Promise<CachedToken>>()

  constructor(
    private readonly credentials: CredentialStore,
    private readonly tokenFetch: TokenFetch,
    private readonly log: Logger,
    private readonly onTokenRequest?: (status: number) => void,
  ) {}

  /** The header to send, or undefined while the registry has not asked for auth (anonymous first). */
  async authorization(registry: string, scope: string): Promise<string | undefined> {
    const challenge = this.challenges.get(registry)
    if (!challenge) return undefined
    if (challenge.scheme === 'basic') {
      const cred = await this.credentials.lookup(registry)
      if (cred?.kind !== 'basic') return undefined
      return 'Basic ' + Buffer.from(`${cred.username}:${cred.password}`).toString('base64')
    }
    if (challenge.scheme !== 'bearer') return undefined
    const key = `${registry}|${scope}`
    const cached = this.tokens.get(key)
    if (cached && cached.expiresAt - REFRESH_MARGIN_MS > Date.now()) return cached.header
    // Single-flight: many reads starting together must not each ask the token service.
    let pending = this.inflight.get(key)
    if (!pending) {
      pending = this.fetchToken(registry, scope, challenge).finally(() => this.inflight.delete(key))
      this.inflight.set(key, pending)
    }
    const token = await pending
    this.tokens.set(key, token)
    return token.header
  }

  /**
   * Records the challenge of a 401 and drops the cached token for the scope. Returns false when retrying cannot
   * help (an unknown scheme).
   */
  onUnauthorized(registry: string, scope: string, wwwAuthenticate: string | string[] | undefined): boolean {
    const header = Array.isArray(wwwAuthenticate) ? wwwAuthenticate.join(', ') : wwwAuthenticate
    const challenge = header ? parseWwwAuthenticate(header).find((c) => c.scheme === 'bearer' || c.scheme === 'basic') : undefined
    this.tokens.delete(`${registry}|${scope}`)
    if (!challenge) return false
    this.challenges.set(registry, challenge)
    return true
  }

  async describeMissing(registry: string): Promise<string> {
    const cred = await this.credentials.lookup(registry)
    return cred
      ? `the registry ${registry} refused the credentials`
      : `the registry ${registry} requires authentication and no credentials were found (docker login, podman login, or --username with --password-stdin)`
  }

  private async fetchToken(registry: string, scope: string, challenge: AuthChallenge): Promise<CachedToken> {
    const realm = challenge.params.realm
    if (!realm) throw new AuthError(`the registry ${registry} sent a Bearer challenge without a realm`)
    const cred = await this.credentials.lookup(registry)
    const url = new URL(realm)
    if (challenge.params.service) url.searchParams.set('service', challenge.params.service)
    url.searchParams.set('scope', scope)
    const res = cred?.kind === 'identity-token'
      ? await this.refreshTokenGrant(url, cred, challenge.params.service, scope)
      : await this.tokenFetch(url, { method: 'GET', headers: basicHeader(cred) })
    this.onTokenRequest?.(res.status)
    const text = res.text
    if (res.status === 401 || res.status === 403) {
      throw new AuthError(
        cred
          ? `the token service for ${registry} refused the credentials (HTTP ${res.status})`
          : `the registry ${registry} requires authentication and no credentials were found (docker login, podman login, or --username with --password-stdin)`,
        res.status,
      )
    }
    if (res.status !== 200) throw new RegistryError(`token service ${url.origin} answered HTTP ${res.status}`, res.status)
    let body: TokenResponse
    try {
      body = JSON.parse(text) as TokenResponse
    } catch {
      throw new RegistryError(`token service ${url.origin} answered with something that is not JSON`, res.status)
    }
    const token = body.token ?? body.access_token
    if (!token) throw new RegistryError(`token service ${url.origin} answered without a token`, res.status)
    const issued = body.issued_at ? Date.parse(body.issued_at) : NaN
    const start = Number.isNaN(issued) ? Date.now() : Math.min(Date.now(), issued)
    const seconds = body.expires_in && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_SECONDS
    this.log.debug({ registry, scope, expiresIn: seconds }, 'bearer token obtained')
    return { header: `Bearer ${token}`, expiresAt: start + seconds * 1000 }
  }

  private refreshTokenGrant(url: URL, cred: Extract<Credential, { kind: 'identity-token' }>, service: string | undefined, scope: string) {
    const form = new URLSearchParams({
      grant_type: 'refresh_token', refresh_token: cred.identityToken, service: service ?? '', scope, client_id: 'cnaifs',
    })
    return this.tokenFetch(new URL(url.origin + url.pathname), {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: form.toString(),
    })
  }
}

function basicHeader(cred: Credential | undefined): Record<string, string> {
  if (cred?.kind !== 'basic') return {}
  return { authorization: 'Basic ' + Buffer.from(`${cred.username}:${cred.password}`).toString('base64') }
}
