import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { FileCredentialStore, defaultAuthFiles } from '../../src/registry/credentials.js'
import { UsageError } from '../../src/util/errors.js'

const b64 = (s: string): string => Buffer.from(s).toString('base64')

let dir: string
let n = 0
/** Writes a config file and returns its path. */
async function config(doc: unknown): Promise<string> {
  const path = join(dir, `config-${++n}.json`)
  await writeFile(path, typeof doc === 'string' ? doc : JSON.stringify(doc))
  return path
}

let binDir: string
let helperLog: string
let helperEnv: NodeJS.ProcessEnv

/** Installs docker-credential-NAME scripts in binDir. */
async function helper(name: string, script: string): Promise<void> {
  const path = join(binDir, `docker-credential-${name}`)
  await writeFile(path, `#!/bin/sh\n${script}\n`)
  await chmod(path, 0o755)
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cnaifs-creds-'))
  binDir = join(dir, 'bin')
  await mkdir(binDir)
  helperLog = join(dir, 'helper.log')
  helperEnv = { PATH: `${binDir}:/usr/bin:/bin` }
  // Answers like docker-credential-pass: JSON for known hosts, "credentials not found" (exit 1) otherwise.
  await helper('test', [
    'read server',
    `echo "$1 $server" >> '${helperLog}'`,
    'case "$server" in',
    '  reg.example:5000) printf \'{"ServerURL":"%s","Username":"helper-user","Secret":"helper-secret"}\' "$server" ;;',
    '  token.example) printf \'{"ServerURL":"%s","Username":"<token>","Secret":"refresh-token-1"}\' "$server" ;;',
    '  *) echo "credentials not found in native keychain"; exit 1 ;;',
    'esac',
  ].join('\n'))
  await helper('broken', 'echo "boom: something else" >&2; exit 3')
  await helper('garbage', 'echo "this is not json"')
})

afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('FileCredentialStore: auths entries', () => {
  it('decodes an auth field (base64 user:password); passwords may contain colons', async () => {
    const store = new FileCredentialStore({ files: [await config({ auths: { 'reg.example:5000': { auth: b64('alice:pa:ss:word') } } })] })
    expect(await store.lookup('reg.example:5000')).toEqual({ kind: 'basic', username: 'alice', password: 'pa:ss:word' })
    expect(await store.lookup('other.example')).toBeUndefined()
  })

  it('reads username/password fields and identity tokens', async () => {
    const store = new FileCredentialStore({ files: [await config({ auths: {
      'a.example': { username: 'u', password: 'p' },
      'b.example': { auth: b64('<token>:'), identitytoken: 'refresh-abc' },
    } })] })
    expect(await store.lookup('a.example')).toEqual({ kind: 'basic', username: 'u', password: 'p' })
    expect(await store.lookup('b.example')).toEqual({ kind: 'identity-token', identityToken: 'refresh-abc' })
  })

  it('matches keys written as URLs or with paths, case-insensitively', async () => {
    const store = new FileCredentialStore({ files: [await config({ auths: {
      'https://Reg.Example:5000/v1/': { auth: b64('a:1') },
      'http://plain.example': { auth: b64('b:2') },
      'quay.example/org/repo': { auth: b64('c:3') },
    } })] })
    expect(await store.lookup('reg.example:5000')).toMatchObject({ username: 'a' })
    expect(await store.lookup('REG.EXAMPLE:5000')).toMatchObject({ username: 'a' })
    expect(await store.lookup('plain.example')).toMatchObject({ username: 'b' })
    expect(await store.lookup('quay.example')).toMatchObject({ username: 'c' })
    expect(await store.lookup('reg.example')).toBeUndefined() // the port is part of the host
  })

  it('treats every Docker Hub alias as the same registry', async () => {
    const store = new FileCredentialStore({ files: [await config({ auths: { 'https://index.docker.io/v1/': { auth: b64('hub:pw') } } })] })
    for (const host of ['registry-1.docker.io', 'docker.io', 'index.docker.io']) {
      expect(await store.lookup(host), host).toEqual({ kind: 'basic', username: 'hub', password: 'pw' })
    }
  })

  it('searches files in order: the first one with an entry wins; missing files are skipped', async () => {
    const first = await config({ auths: { 'reg.example': { auth: b64('first:1') } } })
    const second = await config({ auths: { 'reg.example': { auth: b64('second:2') }, 'only.example': { auth: b64('only:3') } } })
    const store = new FileCredentialStore({ files: [join(dir, 'absent.json'), first, second] })
    expect(await store.lookup('reg.example')).toMatchObject({ username: 'first' })
    expect(await store.lookup('only.example')).toMatchObject({ username: 'only' })
  })

  it('is anonymous with no files at all', async () => {
    expect(await new FileCredentialStore({ files: [] }).lookup('reg.example')).toBeUndefined()
    expect(await new FileCredentialStore({ files: [join(dir, 'nope', 'config.json')] }).lookup('reg.example')).toBeUndefined()
  })

  it('skips an entry with nothing usable in it', async () => {
    const store = new FileCredentialStore({ files: [await config({ auths: { 'reg.example': {} } }), await config({ auths: { 'reg.example': { auth: b64('later:1') } } })] })
    expect(await store.lookup('reg.example')).toMatchObject({ username: 'later' })
  })

  it('reports a file that is not JSON, and an auth that is not user:password, naming the file and never the secret', async () => {
    const bad = await config('{"auths": ')
    await expect(new FileCredentialStore({ files: [bad] }).lookup('x')).rejects.toThrow(UsageError)
    await expect(new FileCredentialStore({ files: [bad] }).lookup('x')).rejects.toThrow(bad)
    const noColon = await config({ auths: { 'reg.example': { auth: b64('justasecretvalue') } } })
    const err: unknown = await new FileCredentialStore({ files: [noColon] }).lookup('reg.example').catch((e: unknown) => e)
    expect(err).toBeInstanceOf(UsageError)
    expect((err as Error).message).toContain(noColon)
    expect((err as Error).message).not.toContain('justasecretvalue')
  })
})

describe('FileCredentialStore: explicit credentials', () => {
  it('--username/--password-stdin win for their registry only', async () => {
    const file = await config({ auths: { 'reg.example': { auth: b64('file:1') }, 'other.example': { auth: b64('other:2') } } })
    const store = new FileCredentialStore({ files: [file], explicit: { registry: 'Reg.Example', username: 'cli', password: 'from-stdin' } })
    expect(await store.lookup('reg.example')).toEqual({ kind: 'basic', username: 'cli', password: 'from-stdin' })
    expect(await store.lookup('other.example')).toMatchObject({ username: 'other' })
  })
})

describe('FileCredentialStore: credential helpers', () => {
  it('a credHelpers entry runs docker-credential-NAME get with the server on stdin, and wins over auths', async () => {
    const file = await config({ credHelpers: { 'reg.example:5000': 'test' }, auths: { 'reg.example:5000': { auth: b64('inline:no') } } })
    const store = new FileCredentialStore({ files: [file], env: helperEnv })
    expect(await store.lookup('reg.example:5000')).toEqual({ kind: 'basic', username: 'helper-user', password: 'helper-secret' })
    expect((await readFile(helperLog, 'utf8')).trim().split('\n').pop()).toBe('get reg.example:5000')
  })

  it('a helper answering <token> gives an identity token', async () => {
    const store = new FileCredentialStore({ files: [await config({ credHelpers: { 'token.example': 'test' } })], env: helperEnv })
    expect(await store.lookup('token.example')).toEqual({ kind: 'identity-token', identityToken: 'refresh-token-1' })
  })

  it('"credentials not found" from a helper means anonymous', async () => {
    const store = new FileCredentialStore({ files: [await config({ credHelpers: { 'unknown.example': 'test' } })], env: helperEnv })
    expect(await store.lookup('unknown.example')).toBeUndefined()
  })

  it('credsStore is used for registries without an entry; a missing credsStore program means anonymous', async () => {
    const withStore = new FileCredentialStore({ files: [await config({ credsStore: 'test', auths: { 'inline.example': { auth: b64('inline:1') } } })], env: helperEnv })
    expect(await withStore.lookup('reg.example:5000')).toMatchObject({ username: 'helper-user' })
    expect(await withStore.lookup('inline.example')).toMatchObject({ username: 'inline' })
    const missing = new FileCredentialStore({ files: [await config({ credsStore: 'not-installed-anywhere' })], env: helperEnv })
    expect(await missing.lookup('reg.example')).toBeUndefined()
  })

  it('a failing, missing or garbled credHelpers program is an error naming the helper', async () => {
    const failing = new FileCredentialStore({ files: [await config({ credHelpers: { 'reg.example': 'broken' } })], env: helperEnv })
    await expect(failing.lookup('reg.example')).rejects.toThrow(/docker-credential-broken failed for reg\.example/)
    const missing = new FileCredentialStore({ files: [await config({ credHelpers: { 'reg.example': 'not-installed-anywhere' } })], env: helperEnv })
    await expect(missing.lookup('reg.example')).rejects.toThrow(/docker-credential-not-installed-anywhere/)
    const garbled = new FileCredentialStore({ files: [await config({ credHelpers: { 'reg.example': 'garbage' } })], env: helperEnv })
    await expect(garbled.lookup('reg.example')).rejects.toThrow(/docker-credential-garbage returned something that is not JSON/)
  })

  it('refuses helper names that could run something else', async () => {
    const store = new FileCredentialStore({ files: [await config({ credHelpers: { 'reg.example': '../../bin/sh' } })], env: helperEnv })
    await expect(store.lookup('reg.example')).rejects.toThrow(/invalid credential helper name/)
  })
})

describe('defaultAuthFiles', () => {
  it('searches REGISTRY_AUTH_FILE, Docker\'s config, podman\'s runtime and config locations, then kubelet\'s config.json', () => {
    expect(defaultAuthFiles({ HOME: '/h', REGISTRY_AUTH_FILE: '/x/auth.json', DOCKER_CONFIG: '/d', XDG_RUNTIME_DIR: '/run/user/1', XDG_CONFIG_HOME: '/c' })).toEqual([
      '/x/auth.json', '/d/config.json', '/run/user/1/containers/auth.json', '/c/containers/auth.json', '/var/lib/kubelet/config.json',
    ])
    expect(defaultAuthFiles({ HOME: '/h' })).toEqual(['/h/.docker/config.json', '/h/.config/containers/auth.json', '/var/lib/kubelet/config.json'])
  })

  it('is what a store without explicit files reads', async () => {
    const docker = join(dir, 'docker-home')
    await mkdir(docker, { recursive: true })
    await writeFile(join(docker, 'config.json'), JSON.stringify({ auths: { 'reg.example': { auth: b64('dockeruser:1') } } }))
    const podman = await config({ auths: { 'podman.example': { auth: b64('podmanuser:2') } } })
    const store = new FileCredentialStore({ env: { HOME: join(dir, 'nohome'), DOCKER_CONFIG: docker, REGISTRY_AUTH_FILE: podman } })
    expect(await store.lookup('reg.example')).toMatchObject({ username: 'dockeruser' })
    expect(await store.lookup('podman.example')).toMatchObject({ username: 'podmanuser' })
  })
})
