/**
 * Persisted state read back from disk (issue 11, item 6): indexes, tag records and compressed-index headers
 * are checked against a schema and a checksum, and anything wrong is reported naming the field; the durable
 * writer leaves private files and no temp file behind.
 */
import { mkdtemp, readdir, readFile, rm, stat, writeFile, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { parseCompressedIndexHeader } from '../../src/compressed/index-schema.js'
import { CompressedIndexStore } from '../../src/compressed/index-store.js'
import { parseIndexFile, parseRefRecord } from '../../src/index/index-schema.js'
import { openModel } from '../../src/index/open-model.js'
import { IndexStore, type ModelIndexFile } from '../../src/index/store.js'
import { RegistryClient } from '../../src/registry/client.js'
import { FileCredentialStore } from '../../src/registry/credentials.js'
import { parseReference } from '../../src/registry/reference.js'
import { writeFileAtomic } from '../../src/util/atomic-write.js'
import { sha256Digest } from '../../src/util/digest.js'
import { sealJson, unsealJson } from '../../src/util/sealed-json.js'

const dirs: string[] = []
async function temp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'cnaifs-state-'))
  dirs.push(d)
  return d
}
afterAll(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }) })

const layerDigest = 'sha256:' + 'a'.repeat(64)
const manifestText = JSON.stringify({
  schemaVersion: 2,
  mediaType: 'application/vnd.oci.image.manifest.v1+json',
  artifactType: 'application/vnd.cncf.model.manifest.v1+json',
  config: { mediaType: 'application/vnd.cncf.model.config.v1+json', digest: 'sha256:' + 'b'.repeat(64), size: 2 },
  layers: [{ mediaType: 'application/vnd.cncf.model.weight.v1.tar', digest: layerDigest, size: 4096, annotations: { 'org.cncf.model.filepath': 'w' } }],
})
const manifestDigest = sha256Digest(manifestText)

function indexDoc(over: Record<string, unknown> = {}): Omit<ModelIndexFile, 'version'> & Record<string, unknown> {
  return {
    reference: 'localhost:5000/m:v1', manifestDigest, manifest: manifestText, config: '', createdAt: '2026-01-01T00:00:00Z', defaultMtimeMs: 0,
    entries: [
      { path: 'model', kind: 'directory', mode: 0o755, uid: 0, gid: 0, mtimeMs: 0 },
      { path: 'model/w.bin', kind: 'file', mode: 0o644, uid: 0, gid: 0, mtimeMs: 0, size: 100, layer: 0, offset: 512 },
      { path: 'model/link', kind: 'hardlink', link: 'model/w.bin' },
    ],
    ...over,
  }
}
const sealed = (over: Record<string, unknown> = {}) => sealJson({ version: 2, ...indexDoc(over) })

describe('sealed JSON', () => {
  it('round-trips and refuses any edited byte', () => {
    const text = sealJson({ a: 1, b: [1.5, 'x'], c: { d: null } })
    expect(unsealJson(text)).toEqual({ doc: { a: 1, b: [1.5, 'x'], c: { d: null } }, sealed: true })
    expect(() => unsealJson(text.replace('1.5', '2.5'))).toThrow(/^checksum: does not match the content/)
    expect(unsealJson('{"a":1}')).toEqual({ doc: { a: 1 }, sealed: false })
    expect(() => unsealJson('{"a":')).toThrow(/^document: not valid JSON/)
  })
})

describe('index files', () => {
  it('accept a sealed version 2 file and an unsealed version 1 file', () => {
    expect(parseIndexFile(sealed(), manifestDigest).entries).toHaveLength(3)
    expect(parseIndexFile(JSON.stringify({ version: 1, ...indexDoc() }), manifestDigest).version).toBe(1)
  })

  it.each([
    ['entries that are not an array', { entries: 'garbage' }, 'entries: expected an array, got "garbage"'],
    ['an entry with a numeric path', { entries: [{ path: 7, kind: 'directory', mode: 0, uid: 0, gid: 0, mtimeMs: 0 }] }, 'entries[0].path: expected a string, got 7'],
    ['a path leaving the model', { entries: [{ path: 'a/../../etc', kind: 'symlink', mode: 0, uid: 0, gid: 0, mtimeMs: 0, target: 'x' }] }, 'entries[0].path: expected a relative path inside the model, got "a/../../etc"'],
    ['an unknown kind', { entries: [{ path: 'a', kind: 'fifo' }] }, 'entries[0].kind: expected "directory", "file", "symlink" or "hardlink", got "fifo"'],
    ['a file past its layer end', { entries: [{ path: 'a', kind: 'file', mode: 0o644, uid: 0, gid: 0, mtimeMs: 0, size: 4000, layer: 0, offset: 512 }] }, 'entries[0]: bytes 512+4000 run past the end of layer 0 (4096 bytes)'],
    ['a file in a layer that does not exist', { entries: [{ path: 'a', kind: 'file', mode: 0o644, uid: 0, gid: 0, mtimeMs: 0, size: 1, layer: 3, offset: 0 }] }, 'entries[0].layer: is 3, but the manifest has 1 layers'],
    ['a negative mode', { entries: [{ path: 'a', kind: 'directory', mode: -1, uid: 0, gid: 0, mtimeMs: 0 }] }, 'entries[0].mode: expected permission bits (0 to 0o7777), got -1'],
    ['a manifest that is not the named one', { manifest: manifestText.replace('"w"', '"v"') }, 'manifest: does not hash to manifestDigest'],
    ['a missing field', { createdAt: undefined }, 'createdAt: missing'],
  ])('refuse %s, naming the field', (_what, over, message) => {
    const doc = { version: 2, ...indexDoc(over) }
    for (const [k, v] of Object.entries(over)) if (v === undefined) delete (doc as Record<string, unknown>)[k]
    expect(() => parseIndexFile(sealJson(doc), manifestDigest)).toThrow(message)
  })

  it('refuse a version 2 file without a checksum, a damaged checksum, another version, another digest', () => {
    expect(() => parseIndexFile(JSON.stringify({ version: 2, ...indexDoc() }), manifestDigest)).toThrow('checksum: missing')
    expect(() => parseIndexFile(sealed().replace('"model/w.bin"', '"model/x.bin"'), manifestDigest)).toThrow(/^checksum: does not match/)
    expect(() => parseIndexFile(sealJson({ version: 9, ...indexDoc() }), manifestDigest)).toThrow('version: expected 1 or 2, got 9')
    expect(() => parseIndexFile(sealed(), 'sha256:' + 'c'.repeat(64))).toThrow(`manifestDigest: is ${manifestDigest}, but the file is named for sha256:${'c'.repeat(64)}`)
  })

  it('tag records: checked fields, and the reference their file is named for', () => {
    const rec = sealJson({ reference: 'h/r:v1', manifestDigest, resolvedAt: 'now' })
    expect(parseRefRecord(rec, 'h/r:v1').manifestDigest).toBe(manifestDigest)
    expect(() => parseRefRecord(rec, 'h/r:v2')).toThrow('reference: is "h/r:v1", but the file is named for "h/r:v2"')
    expect(() => parseRefRecord(sealJson({ reference: 'h/r:v1', manifestDigest: 'sha256:xyz', resolvedAt: 'now' }), 'h/r:v1')).toThrow('manifestDigest: expected a sha256 digest, got "sha256:xyz"')
  })
})

describe('the index store', () => {
  it('writes private, sealed files and reports a damaged one as invalid with its path', async () => {
    const cacheDir = await temp()
    const store = new IndexStore(cacheDir)
    await store.save(indexDoc())
    await store.saveRef('localhost:5000/m:v1', manifestDigest)
    const path = store.pathFor(manifestDigest)
    expect((await stat(path)).mode & 0o777).toBe(0o600)
    expect((await stat(store.refPath('localhost:5000/m:v1'))).mode & 0o777).toBe(0o600)
    expect((await stat(store.dir)).mode & 0o777).toBe(0o700)
    expect((await store.read(manifestDigest)).state).toBe('ok')
    expect(await readdir(store.dir)).toEqual([`${manifestDigest.slice(7)}.json`, 'refs']) // no temp file left

    await writeFile(path, JSON.stringify({ version: 2, ...indexDoc({ entries: 'garbage' }) }))
    expect(await store.read(manifestDigest)).toEqual({ state: 'invalid', path, reason: 'checksum: missing' })
    await writeFile(path, sealed({ entries: 'garbage' }))
    expect(await store.read(manifestDigest)).toEqual({ state: 'invalid', path, reason: 'entries: expected an array, got "garbage"' })
    expect(await store.read('sha256:' + 'd'.repeat(64))).toMatchObject({ state: 'absent' })
  })

  it('offline, a damaged index fails with one line naming the file', async () => {
    const cacheDir = await temp()
    const store = new IndexStore(cacheDir)
    await store.save(indexDoc())
    await store.saveRef('127.0.0.1:9/m:v1', manifestDigest)
    await writeFile(store.pathFor(manifestDigest), sealed({ entries: [{ path: 7, kind: 'directory', mode: 0, uid: 0, gid: 0, mtimeMs: 0 }] }))
    // Port 9 (discard) has no listener here: the registry is unreachable.
    const client = new RegistryClient({ credentials: new FileCredentialStore({ files: [], env: {} }), plainHttp: true, retries: 0, requestTimeoutMs: 2000 })
    try {
      const err = await openModel(client, parseReference('127.0.0.1:9/m:v1'), { store }).then(() => undefined, (e: Error & { code?: string }) => e)
      expect(err?.code).toBe('EUNREACHABLE')
      expect(err?.message).toContain(`the cached index ${store.pathFor(manifestDigest)} is invalid (entries[0].path: expected a string, got 7)`)
      expect(err?.message).not.toContain('\n')

      await writeFile(store.refPath('127.0.0.1:9/m:v1'), '{"reference":')
      const refErr = await openModel(client, parseReference('127.0.0.1:9/m:v1'), { store }).then(() => undefined, (e: Error) => e)
      expect(refErr?.message).toContain(`the tag record ${store.refPath('127.0.0.1:9/m:v1')} is invalid (document: not valid JSON`)
    } finally {
      await client.close()
    }
  })
})

describe('compressed index headers', () => {
  const digest = 'sha256:' + 'e'.repeat(64)
  const header = (over: Record<string, unknown> = {}) => ({
    version: 2, format: 'gzip', compressed: { digest, size: 3 * 1024 * 1024 }, diffId: 'sha256:' + 'f'.repeat(64), size: 8 * 1024 * 1024,
    entries: [{ name: 'a.bin', type: 'file', size: 100, dataOffset: 512, mode: 0o644, uid: 0, gid: 0, mtime: 1 }],
    segments: [[10, 3 * 1024 * 1024 - 8, 0, 8 * 1024 * 1024]], checkpoints: [{ out: 0, bit: 80, seg: 0 }, { out: 4194304, bit: 8000000, seg: 0, win: [0, 1000] }],
    chunkSize: 1024 * 1024, hashes: [1000, 96], binBytes: 1096, binSha256: 'sha256:' + '0'.repeat(64), createdAt: 'now', ...over,
  })

  it('accept a consistent header and refuse ranges outside their bounds', () => {
    expect(parseCompressedIndexHeader(sealJson(header()), digest).checkpoints).toHaveLength(2)
    expect(() => parseCompressedIndexHeader(sealJson(header({ hashes: [1000, 64] })), digest)).toThrow('hashes: holds 64 bytes, but 3 chunks need 96')
    expect(() => parseCompressedIndexHeader(sealJson(header({ checkpoints: [{ out: 0, bit: 0, seg: 0, win: [900, 1000] }] })), digest)).toThrow('checkpoints[0].win: [900, +1000] runs past the end of the .bin (1096 bytes)')
    expect(() => parseCompressedIndexHeader(sealJson(header({ checkpoints: [{ out: 0, bit: 0, seg: 4 }] })), digest)).toThrow('checkpoints[0].seg: names segment 4 of 1')
    expect(() => parseCompressedIndexHeader(sealJson(header({ entries: [{ name: 7 }] })), digest)).toThrow('entries[0].name: expected a string, got 7')
    expect(() => parseCompressedIndexHeader(sealJson(header({ chunkSize: 4096 })), digest)).toThrow('chunkSize: expected 1048576, got 4096')
    expect(() => parseCompressedIndexHeader(sealJson(header({ binSha256: undefined })), digest)).toThrow('binSha256: missing')
  })

  it('the store reports a damaged .bin and a missing one as invalid, and remove() deletes both files', async () => {
    const store = new CompressedIndexStore(await temp())
    const w = await store.writer(digest)
    await w.appendWindow(Buffer.alloc(32 * 1024, 7))
    const hashes = Buffer.alloc(96, 1)
    await w.finish({ format: 'gzip', compressed: { digest, size: 3 * 1024 * 1024 }, diffId: 'sha256:' + 'f'.repeat(64), size: 8 * 1024 * 1024, entries: [], segments: [[0, 10, 0, 100]], checkpoints: [], chunkSize: 1024 * 1024 }, hashes)
    const ok = await store.read(digest)
    expect(ok.state).toBe('ok')
    const bin = join(store.dir, `${digest.slice(7)}.bin`)
    const json = join(store.dir, `${digest.slice(7)}.json`)
    expect([(await stat(bin)).mode & 0o777, (await stat(json)).mode & 0o777]).toEqual([0o600, 0o600])
    const bytes = await readFile(bin)
    bytes[0] ^= 0xff
    await writeFile(bin, bytes)
    expect(await store.read(digest)).toEqual({ state: 'invalid', path: bin, reason: 'its content does not match the sha256 recorded in the .json: the file is damaged' })
    await rm(bin)
    expect(await store.read(digest)).toEqual({ state: 'invalid', path: bin, reason: 'missing (its .json is there)' })
    await store.remove(digest)
    expect(await readdir(store.dir)).toEqual([])
  })
})

describe('writeFileAtomic', () => {
  it('creates 0600 files in 0700 directories, replaces whole, and leaves no temp file when it fails', async () => {
    const dir = join(await temp(), 'a', 'b')
    const path = join(dir, 'f.json')
    await writeFileAtomic(path, 'one')
    await writeFileAtomic(path, 'two')
    expect(await readFile(path, 'utf8')).toBe('two')
    expect((await stat(path)).mode & 0o777).toBe(0o600)
    expect((await stat(dir)).mode & 0o777).toBe(0o700)
    await mkdir(join(dir, 'taken'))
    await writeFile(join(dir, 'taken', 'x'), '')
    await expect(writeFileAtomic(join(dir, 'taken'), 'three')).rejects.toMatchObject({ code: expect.stringMatching(/^(EISDIR|ENOTEMPTY|EEXIST)$/) })
    expect((await readdir(dir)).sort()).toEqual(['f.json', 'taken'])
  })
})
