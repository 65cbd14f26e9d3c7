/**
 * vitest globalSetup: starts the shared test registries once per test run.
 *
 *   registry       anonymous registry
 *   basicRegistry  htpasswd (basic) auth, user alice / s3cret-basic
 *   tokenRegistry  token (Bearer) auth against our own token service, user bob / s3cret-token
 *
 * Tests get them with `inject('registry')` etc. (typed through ProvidedContext below). Each vitest project
 * that lists this file runs its own registries (e2e and e2e-fuse-native may run at the same time).
 */
import { existsSync } from 'node:fs'
import type { TestProject } from 'vitest/node'
import { REGISTRY_BINARY, startRegistry, type RegistryProcess } from './registry.js'
import { startTokenService, type TokenService } from './token-service.js'

export interface TestRegistryInfo {
  /** 127.0.0.1:PORT */
  host: string
  /** http://127.0.0.1:PORT */
  url: string
}

export interface BasicRegistryInfo extends TestRegistryInfo {
  username: string
  password: string
}

export interface TokenRegistryInfo extends BasicRegistryInfo {
  /** The token realm, e.g. http://127.0.0.1:PORT/token */
  tokenServiceUrl: string
  /** The `service` the registry announces and the token service requires. */
  service: string
}

declare module 'vitest' {
  export interface ProvidedContext {
    registry: TestRegistryInfo
    basicRegistry: BasicRegistryInfo
    tokenRegistry: TokenRegistryInfo
  }
}

export const BASIC_USER = { username: 'alice', password: 's3cret-basic' } as const
export const TOKEN_USER = { username: 'bob', password: 's3cret-token' } as const

export default async function setup({ provide }: TestProject): Promise<() => Promise<void>> {
  if (!existsSync(REGISTRY_BINARY)) {
    throw new Error('docker-registry not installed: apt-get install docker-registry')
  }

  // Stopped in reverse order on teardown, or right away if a later start fails.
  const started: Array<RegistryProcess | TokenService> = []
  const teardown = async (): Promise<void> => {
    const errors: unknown[] = []
    for (const s of started.reverse()) await s.stop().catch((err: unknown) => errors.push(err))
    started.length = 0
    if (errors.length) throw new AggregateError(errors, 'test registry teardown failed')
  }

  let step = 'anonymous registry'
  try {
    const anon = await startRegistry()
    started.push(anon)

    step = 'basic-auth registry'
    const basic = await startRegistry({ auth: { kind: 'basic', ...BASIC_USER } })
    started.push(basic)

    step = 'token service'
    const tokens = await startTokenService({ ...TOKEN_USER })
    started.push(tokens)

    step = 'token-auth registry'
    const tokenReg = await startRegistry({
      auth: {
        kind: 'token',
        realm: tokens.url,
        service: tokens.service,
        issuer: tokens.issuer,
        rootCertBundlePath: tokens.rootCertBundlePath,
      },
    })
    started.push(tokenReg)

    const registry: TestRegistryInfo = { host: anon.host, url: anon.url }
    const basicRegistry: BasicRegistryInfo = { host: basic.host, url: basic.url, ...BASIC_USER }
    const tokenRegistry: TokenRegistryInfo = {
      host: tokenReg.host,
      url: tokenReg.url,
      ...TOKEN_USER,
      tokenServiceUrl: tokens.url,
      service: tokens.service,
    }
    provide('registry', registry)
    provide('basicRegistry', basicRegistry)
    provide('tokenRegistry', tokenRegistry)

  } catch (err) {
    await teardown().catch(() => {})
    throw new Error(`global setup: starting the ${step} failed: ${(err as Error).message}`, { cause: err })
  }

  return teardown
}
