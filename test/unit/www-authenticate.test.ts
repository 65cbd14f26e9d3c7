import { describe, expect, it } from 'vitest'
import { parseWwwAuthenticate } from '../../src/registry/www-authenticate.js'

describe('parseWwwAuthenticate', () => {
  it('parses a distribution Bearer challenge, keeping commas inside quoted scopes', () => {
    expect(parseWwwAuthenticate('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:samalba/my-app:pull,push' } },
    ])
  })

  it('parses a Basic challenge', () => {
    expect(parseWwwAuthenticate('Basic realm="cnaifs-test"')).toEqual([{ scheme: 'basic', params: { realm: 'cnaifs-test' } }])
  })

  it('lower-cases scheme and parameter names but not values', () => {
    expect(parseWwwAuthenticate('BEARER Realm="https://Auth.Example/Token",SERVICE="Reg"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://Auth.Example/Token', service: 'Reg' } },
    ])
  })

  it('accepts spaces around = and after commas, and unquoted token values', () => {
    expect(parseWwwAuthenticate('Bearer realm = "https://a/token" ,  service=registry.example.com, error=invalid_token')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://a/token', service: 'registry.example.com', error: 'invalid_token' } },
    ])
  })

  it('unescapes quoted-pairs', () => {
    expect(parseWwwAuthenticate('Basic realm="a \\"quoted\\" realm \\\\ here"')[0]!.params.realm).toBe('a "quoted" realm \\ here')
  })

  it('splits a list of challenges', () => {
    const list = parseWwwAuthenticate('Basic realm="basic-realm", Bearer realm="https://t/token",service="svc",scope="repository:a:pull"')
    expect(list).toEqual([
      { scheme: 'basic', params: { realm: 'basic-realm' } },
      { scheme: 'bearer', params: { realm: 'https://t/token', service: 'svc', scope: 'repository:a:pull' } },
    ])
  })

  it('keeps a scheme with no parameters', () => {
    expect(parseWwwAuthenticate('Negotiate')).toEqual([{ scheme: 'negotiate', params: {} }])
    expect(parseWwwAuthenticate('Negotiate, Basic realm="x"')).toEqual([
      { scheme: 'negotiate', params: {} },
      { scheme: 'basic', params: { realm: 'x' } },
    ])
  })

  it('returns nothing for an empty header and survives garbage without throwing', () => {
    expect(parseWwwAuthenticate('')).toEqual([])
    expect(parseWwwAuthenticate('   ')).toEqual([])
    expect(() => parseWwwAuthenticate('Bearer realm="unterminated')).not.toThrow()
    expect(parseWwwAuthenticate('Bearer realm="unterminated')[0]).toEqual({ scheme: 'bearer', params: { realm: 'unterminated' } })
    expect(() => parseWwwAuthenticate('=,=,"x"')).not.toThrow()
  })
})
