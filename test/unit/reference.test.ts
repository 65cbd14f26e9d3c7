import { describe, expect, it } from 'vitest'
import { formatReference, manifestSelector, parseReference, withDigest } from '../../src/registry/reference.js'
import { UsageError } from '../../src/util/errors.js'

const D = `sha256:${'ab'.repeat(32)}`

describe('parseReference', () => {
  it.each([
    ['ubuntu', { registry: 'registry-1.docker.io', repository: 'library/ubuntu', tag: 'latest' }],
    ['ubuntu:22.04', { registry: 'registry-1.docker.io', repository: 'library/ubuntu', tag: '22.04' }],
    ['org/model', { registry: 'registry-1.docker.io', repository: 'org/model', tag: 'latest' }],
    ['docker.io/ubuntu', { registry: 'registry-1.docker.io', repository: 'library/ubuntu', tag: 'latest' }],
    ['index.docker.io/org/model:v1', { registry: 'registry-1.docker.io', repository: 'org/model', tag: 'v1' }],
    ['ghcr.io/org/team/model:v1.0-rc_1', { registry: 'ghcr.io', repository: 'org/team/model', tag: 'v1.0-rc_1' }],
    ['localhost/model', { registry: 'localhost', repository: 'model', tag: 'latest' }],
    ['localhost:5000/a/b:c', { registry: 'localhost:5000', repository: 'a/b', tag: 'c' }],
    ['127.0.0.1:5000/models/llama', { registry: '127.0.0.1:5000', repository: 'models/llama', tag: 'latest' }],
    ['[::1]:5000/model', { registry: '[::1]:5000', repository: 'model', tag: 'latest' }],
    ['registry.example.com:443/x', { registry: 'registry.example.com:443', repository: 'x', tag: 'latest' }],
    ['host.io/a__b/c--d/e.f_g', { registry: 'host.io', repository: 'a__b/c--d/e.f_g', tag: 'latest' }],
    // a first component without dot, port or "localhost" is a repository path, as in Docker
    ['myhost:5000', { registry: 'registry-1.docker.io', repository: 'library/myhost', tag: '5000' }],
  ])('%s', (input, expected) => {
    const ref = parseReference(input)
    expect(ref).toEqual(expected)
  })

  it('keeps a digest, with or without a tag, and adds no default tag to a pinned reference', () => {
    expect(parseReference(`r.io/m@${D}`)).toEqual({ registry: 'r.io', repository: 'm', tag: undefined, digest: D })
    expect(parseReference(`r.io/m:v1@${D}`)).toEqual({ registry: 'r.io', repository: 'm', tag: 'v1', digest: D })
  })

  it('trims surrounding whitespace', () => {
    expect(parseReference('  r.io/m:v1 \n')).toMatchObject({ registry: 'r.io', repository: 'm', tag: 'v1' })
  })

  it.each([
    ['', /empty/],
    ['   ', /empty/],
    ['Upper', /repository path component "Upper"/],
    ['r.io/Org/model', /"Org"/],
    ['http://r.io/m', /without a scheme/],
    ['https://r.io/m:v1', /without a scheme/],
    ['r.io/m@sha256:abc', /digest must be sha256:<64 hex digits>/],
    [`r.io/m@sha512:${'a'.repeat(128)}`, /digest must be sha256/],
    [`r.io/m@sha256:${'A'.repeat(64)}`, /digest must be sha256/],
    ['r.io/m:bad!tag', /invalid tag "bad!tag"/],
    ['r.io/m:.hidden', /invalid tag/],
    [`r.io/m:${'a'.repeat(129)}`, /invalid tag/],
    ['r.io/a//b', /path component ""/],
    ['r.io/a/', /path component ""/],
    ['r.io/-a', /"-a"/],
    ['r.io/a-', /"a-"/],
    ['r.io:/x', /invalid registry host/],
    ['-bad.io/x', /invalid registry host/],
    ['r.io/a:b:c', /"a:b"/],
    [`r.io/${'a'.repeat(256)}`, /longer than 255/],
    [`r.io/${'a'.repeat(1100)}`, /too long/],
  ])('rejects %j', (input, message) => {
    let err: unknown
    try {
      parseReference(input)
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(UsageError)
    expect((err as UsageError).code).toBe('EUSAGE')
    expect((err as Error).message).toMatch(/^invalid image reference /)
    expect((err as Error).message).toMatch(message)
  })
})

describe('formatReference, manifestSelector, withDigest', () => {
  it('round-trips what parseReference produced', () => {
    for (const s of ['r.io/m:v1', `r.io/m@${D}`, `r.io/m:v1@${D}`, 'localhost:5000/a/b:c']) {
      expect(formatReference(parseReference(s))).toBe(s)
    }
    expect(formatReference(parseReference('ubuntu'))).toBe('registry-1.docker.io/library/ubuntu:latest')
  })

  it('selects the digest when pinned, else the tag', () => {
    expect(manifestSelector(parseReference('r.io/m:v1'))).toBe('v1')
    expect(manifestSelector(parseReference(`r.io/m:v1@${D}`))).toBe(D)
    expect(manifestSelector({ registry: 'r.io', repository: 'm' })).toBe('latest')
  })

  it('withDigest pins a reference without changing the original', () => {
    const ref = parseReference('r.io/m:v1')
    const pinned = withDigest(ref, D)
    expect(pinned).toEqual({ registry: 'r.io', repository: 'm', tag: 'v1', digest: D })
    expect(ref.digest).toBeUndefined()
  })
})
