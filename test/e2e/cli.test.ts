/**
 * End-to-end tests of the `cnaifs` CLI (inspect, ls, cat, push) as a child process against the real
 * registries of global-setup (anonymous, basic auth, token auth), private registries and token services,
 * and the fault-injecting proxy. Every test has its own --cache-dir and repositories.
 */
import { once } from 'node:events'
import { chmod, link, mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises'
import http from 'node:http'
import type net from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest'
import type {} from '../helpers/global-setup.js' // ProvidedContext typing for inject()
import { startProxy, type FaultProxy } from '../helpers/proxy.js'
import { freePort, startRegistry, type RegistryProcess } from '../helpers/registry.js'
import { startTokenService, type TokenService } from '../helpers/token-service.js'
import {
  buildTar,
  cleanupTempDirs,
  describeResult,
  gnuTar,
  makeModelDir,
  pushModelDir,
  modelConfig,
  pushArtifact,
  runCli,
  seededBytes,
  sha256,
  sha256File,
  tarHeader,
  tarPad,
  tempDir,
  uniqueRepo,
  type CliResult,
  type ModelDir,
  type RunCliOptions,
} from '../helpers/cli.js'

const reg = inject('registry')

const CNCF_ARTIFACT = 'application/vnd.cncf.model.manifest.v1+json'
const CNCF_CONFIG = 'application/vnd.cncf.model.config.v1+json'
const CNAI_ARTIFACT = 'application/vnd.cnai.model.manifest.v1+json'
const CNAI_CONFIG = 'application/vnd.cnai.model.config.v1+json'
const layerType = (kind: string, form: string, family = 'cncf') => `application/vnd.${family}.model.${kind}.v1.${form}`

afterAll(cleanupTempDirs)

/** A CLI bound to its own fresh cache dir. */
async function session(): Promise<{ cacheDir: string; run: (args: string[], opts?: RunCliOptions) => Promise<CliResult> }> {
  const cacheDir = await tempDir('cnaifs-cache-')
  return { cacheDir, run: (args, opts) => runCli(['--cache-dir', cacheDir, ...args], opts) }
}

function expectOk(r: CliResult): void {
  expect(r.code, describeResult(r)).toBe(0)
}

/** Exit code `code`, and stderr is exactly one `cnaifs: …` line containing every fragment. */
function expectOneLineError(r: CliResult, code: number, ...fragments: (string | RegExp)[]): void {
  expect(r.code, describeResult(r)).toBe(code)
  expect(r.stderr, describeResult(r)).toMatch(/^cnaifs: [^\n]+\n$/)
  for (const f of fragments) {
    if (typeof f === 'string') expect(r.stderr).toContain(f)
    else expect(r.stderr).toMatch(f)
  }
}

function lines(out: Buffer): string[] {
  return out.toString('utf8').split('\n').filter((l) => l !== '')
}

interface LongLine {
  mode: string
  nlink: number
  uid: number
  gid: number
  size: number
  date: string
  name: string
  target?: string
}

/** Parses `ls -l` lines: mode nlink uid gid size YYYY-MM-DD HH:MM:SS name [-> target]. */
function parseLong(out: Buffer): Map<string, LongLine> {
  const map = new Map<string, LongLine>()
  for (const line of lines(out)) {
    const m = /^([-dl][-rwxsStT]{9})\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (.+)$/.exec(line)
    if (!m) throw new Error(`unparseable ls -l line: ${JSON.stringify(line)}`)
    let name = m[7]!
    let target: string | undefined
    if (m[1]!.startsWith('l')) [name, target] = name.split(' -> ') as [string, string]
    map.set(name, { mode: m[1]!, nlink: Number(m[2]), uid: Number(m[3]), gid: Number(m[4]), size: Number(m[5]), date: m[6]!, name, target })
  }
  return map
}

const proxies = new Set<FaultProxy>()
afterAll(async () => {
  await Promise.all([...proxies].map((p) => p.stop()))
})

/** A fault proxy of the test's own, so concurrent tests never share counters or faults (stopped after the file). */
async function proxyTo(url: string): Promise<FaultProxy> {
  const proxy = await startProxy(url)
  proxies.add(proxy)
  return proxy
}

/** Runs fn over items, at most `limit` at a time (CLI processes are CPU-bound at start-up). */
async function parallel<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!)
  }))
}

/** Every directory implied by a set of file paths. */
function dirsOf(paths: string[]): string[] {
  const dirs = new Set<string>()
  for (const p of paths) {
    const parts = p.split('/')
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'))
  }
  return [...dirs]
}

async function indexFiles(cacheDir: string): Promise<string[]> {
  return (await readdir(join(cacheDir, 'index')).catch(() => [] as string[])).filter((n) => n.endsWith('.json'))
}

async function fetchManifest(baseUrl: string, repo: string, tag: string): Promise<Record<string, any>> {
  const res = await fetch(`${baseUrl}/v2/${repo}/manifests/${tag}`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })
  expect(res.status).toBe(200)
  return (await res.json()) as Record<string, any>
}

// ---------------------------------------------------------------------------------------------------------

const MODEL_SPEC = {
  'config.json': '{"architectures":["LlamaForCausalLM"],"hidden_size":64}\n',
  'tokenizer.json': 40_000,
  'model-00001-of-00002.safetensors': 300_000,
  'model-00002-of-00002.safetensors': 123_457,
  'sub/nested/deep/notes.md': 'deep file\n',
  'code/run.py': 'print("hello")\n',
  'docs/a file with spaces.txt': 'spaces\n',
  'docs/résumé – ünïcode.md': 'non-ASCII name: a PAX path record in tar mode\n',
  [`long/${'x'.repeat(60)}/${'y'.repeat(60)}/weights.safetensors`]: 5_000, // > 100 bytes: PAX path too
  'empty.bin': 0,
}

describe.concurrent.each(['raw', 'tar'] as const)('push --format %s, then ls and cat round trip', (format) => {
  let model: ModelDir
  let ref: string
  let pushed: CliResult

  beforeAll(async () => {
    model = await makeModelDir(MODEL_SPEC, `round-trip-${format}`)
    ref = `${reg.host}/${uniqueRepo(`roundtrip-${format}`)}:v1`
    pushed = await runCli(['--cache-dir', await tempDir('cnaifs-cache-'), 'push', model.dir, ref, '--format', format, '--no-progress'])
  })

  it('push reports the files and the pinned digest', () => {
    expectOk(pushed)
    expect(pushed.stdout.toString()).toMatch(new RegExp(`^pushed 10 files \\(.+\\) as ${ref.replace(/[.:/]/g, '\\$&')}@sha256:[a-f0-9]{64}\\n$`))
  })

  it('ls -R lists every file and implied directory, sorted', async () => {
    const cli = await session()
    const r = await cli.run(['ls', '-R', ref])
    expectOk(r)
    const paths = Object.keys(model.files)
    const expected = [...paths, ...dirsOf(paths)].sort()
    expect(lines(r.stdout)).toEqual(expected)
    expect(r.stderr).toBe('')
  })

  it('ls -l -R shows the right sizes and kinds; ls of a sub-directory shows its children', async () => {
    const cli = await session()
    const r = await cli.run(['ls', '-l', '-R', ref])
    expectOk(r)
    const long = parseLong(r.stdout)
    for (const [path, f] of Object.entries(model.files)) {
      expect(long.get(path), path).toMatchObject({ size: f.size, nlink: 1 })
      expect(long.get(path)!.mode, path).toMatch(/^-r/)
    }
    for (const dir of dirsOf(Object.keys(model.files))) expect(long.get(dir)!.mode, dir).toMatch(/^d/)

    const sub = await cli.run(['ls', ref, 'sub/nested'])
    expectOk(sub)
    expect(lines(sub.stdout)).toEqual(['deep'])
    const one = await cli.run(['ls', '-l', ref, '/model-00002-of-00002.safetensors'])
    expectOk(one)
    expect(parseLong(one.stdout).get('model-00002-of-00002.safetensors')?.size).toBe(123_457)
  })

  it('cat returns every file byte for byte', async () => {
    const cli = await session()
    await parallel(Object.entries(model.files), 3, async ([path, f]) => {
      const r = await cli.run(['cat', ref, path])
      expectOk(r)
      expect(r.stdout.length, path).toBe(f.size)
      expect(sha256(r.stdout), path).toBe(await sha256File(join(model.dir, path)))
      expect(f.sha256).toBe(await sha256File(join(model.dir, path))) // makeModelDir's bookkeeping agrees
    })
  })

  it('writes the current (cncf) media types and one layer per file', async () => {
    const m = await fetchManifest(reg.url, ref.slice(reg.host.length + 1).split(':')[0]!, 'v1')
    expect(m.artifactType).toBe(CNCF_ARTIFACT)
    expect(m.config.mediaType).toBe(CNCF_CONFIG)
    expect(m.layers).toHaveLength(10)
    for (const l of m.layers) {
      expect(l.mediaType).toMatch(new RegExp(`^application/vnd\\.cncf\\.model\\.(weight|weight\\.config|code|doc)\\.v1\\.${format}$`))
      expect(Object.keys(model.files)).toContain(l.annotations['org.cncf.model.filepath'])
    }
    const byPath = Object.fromEntries(m.layers.map((l: any) => [l.annotations['org.cncf.model.filepath'], l.mediaType]))
    expect(byPath['model-00001-of-00002.safetensors']).toBe(layerType('weight', format))
    expect(byPath['config.json']).toBe(layerType('weight.config', format))
    expect(byPath['code/run.py']).toBe(layerType('code', format))
  })
})

describe.concurrent('push --legacy', () => {
  it('writes the vnd.cnai family, which inspect, ls and cat read back', async () => {
    const model = await makeModelDir({ 'config.json': '{"a":1}\n', 'weights/model.safetensors': 50_000, 'README.md': '# legacy\n' }, 'legacy')
    const repo = uniqueRepo('legacy')
    const ref = `${reg.host}/${repo}:old`
    const cli = await session()
    expectOk(await cli.run(['push', model.dir, ref, '--legacy', '--name', 'legacy-model', '--no-progress']))

    const r = await cli.run(['inspect', '--json', ref])
    expectOk(r)
    const info = JSON.parse(r.stdout.toString())
    expect(info.family).toBe('cnai')
    expect(info.artifactType).toBe(CNAI_ARTIFACT)
    expect(info.configMediaType).toBe(CNAI_CONFIG)
    expect(info.config.name).toBe('legacy-model')
    expect(info.config.createdAt).toMatch(/^\d{4}-\d\d-\d\dT/) // written as snake_case created_at
    expect(info.layers).toHaveLength(3)
    for (const l of info.layers) expect(l.mediaType).toMatch(/^application\/vnd\.cnai\.model\.(weight|weight\.config|doc)\.v1\.raw$/)
    expect(info.files).toEqual({ count: 3, bytes: 50_000 + 8 + 9 })

    const m = await fetchManifest(reg.url, repo, 'old')
    for (const l of m.layers) {
      expect(l.annotations['org.cnai.model.filepath']).toBeTruthy()
      expect(l.annotations['org.cncf.model.filepath']).toBeUndefined()
      expect(JSON.parse(l.annotations['org.cnai.model.file.metadata+json'])).toMatchObject({ typeflag: 0 })
    }

    const ls = await cli.run(['ls', '-R', ref])
    expectOk(ls)
    expect(lines(ls.stdout)).toEqual(['README.md', 'config.json', 'weights', 'weights/model.safetensors'])
    const cat = await cli.run(['cat', ref, 'weights/model.safetensors'])
    expectOk(cat)
    expect(sha256(cat.stdout)).toBe(model.files['weights/model.safetensors']!.sha256)
  })
})

describe.concurrent('inspect', () => {
  let ref: string
  let digest: string
  let model: ModelDir

  beforeAll(async () => {
    model = await makeModelDir({ 'config.json': '{}\n', 'model.safetensors': 70_000, 'tokenizer.json': 1000, 'LICENSE': 'MIT\n' }, 'inspect')
    ref = `${reg.host}/${uniqueRepo('inspect')}:v2`
    const r = await runCli(['--cache-dir', await tempDir('cnaifs-cache-'), 'push', model.dir, ref, '--format', 'tar', '--name', 'tiny-llm', '--no-progress'])
    expectOk(r)
    digest = /@(sha256:[a-f0-9]{64})/.exec(r.stdout.toString())![1]!
  })

  it('prints the name, family, file count and a layer table', async () => {
    const cli = await session()
    const r = await cli.run(['inspect', ref])
    expectOk(r)
    const text = r.stdout.toString()
    expect(text).toContain(`Reference:     ${ref}`)
    expect(text).toContain(`Digest:        ${digest}`)
    expect(text).toMatch(/^Name: +tiny-llm$/m)
    expect(text).toMatch(/^Family: +cncf \(application\/vnd\.cncf\.model\.manifest\.v1\+json\)$/m)
    expect(text).toMatch(/^Files: +4 \(.*, 71007 bytes\)$/m)
    expect(text).toMatch(/^Layers \(4\):$/m)
    const table = text.slice(text.indexOf('Layers (4):'))
    expect(table).toMatch(/#\s+MEDIA TYPE\s+SIZE\s+DIGEST\s+PATH/)
    // modctl order: weight.config, weight, then docs; one row per layer with its path.
    const rows = table.split('\n').slice(2).filter(Boolean)
    expect(rows.map((row) => row.trim().split(/\s+/).pop())).toEqual(['config.json', 'tokenizer.json', 'model.safetensors', 'LICENSE'])
    expect(rows[2]).toContain(layerType('weight', 'tar'))
  })

  it('--json is machine readable and agrees with the manifest', async () => {
    const cli = await session()
    const r = await cli.run(['inspect', '--json', ref])
    expectOk(r)
    const info = JSON.parse(r.stdout.toString())
    expect(info).toMatchObject({
      reference: ref,
      digest,
      family: 'cncf',
      artifactType: CNCF_ARTIFACT,
      configMediaType: CNCF_CONFIG,
      config: { name: 'tiny-llm' },
      files: { count: 4, bytes: 70_000 + 1_000 + 3 + 4 },
    })
    expect(info.config.diffIds).toHaveLength(4)
    expect(info.layers.map((l: any) => l.path)).toEqual(['config.json', 'tokenizer.json', 'model.safetensors', 'LICENSE'])
    expect(info.layers.map((l: any) => l.form)).toEqual(['tar', 'tar', 'tar', 'tar'])
    expect(info.config.diffIds).toEqual(info.layers.map((l: any) => l.digest))
  })

  it('accepts a digest-pinned reference', async () => {
    const cli = await session()
    const pinned = `${ref.replace(/:v2$/, '')}@${digest}`
    const r = await cli.run(['inspect', '--json', pinned])
    expectOk(r)
    expect(JSON.parse(r.stdout.toString()).digest).toBe(digest)
  })
})

// ---------------------------------------------------------------------------------------------------------

describe.concurrent('usage and lookup errors', () => {
  let ref: string
  beforeAll(async () => {
    const model = await makeModelDir({ 'a/b.bin': 10 }, 'errors')
    ref = `${reg.host}/${uniqueRepo('errors')}:v1`
    await pushModelDir(model.dir, ref)
  })

  it('ls of a missing path exits 4 with one line', async () => {
    const cli = await session()
    const r = await cli.run(['ls', ref, 'a/nope.bin'])
    expectOneLineError(r, 4, 'a/nope.bin')
    expect(r.stdout.length).toBe(0)
    const cat = await cli.run(['cat', ref, 'missing.txt'])
    expectOneLineError(cat, 4, 'missing.txt')
  })

  it('cat of a directory is a usage error', async () => {
    const cli = await session()
    expectOneLineError(await cli.run(['cat', ref, 'a']), 2, 'a', 'directory')
  })

  it('a missing repository or tag exits 4 naming it', async () => {
    const cli = await session()
    expectOneLineError(await cli.run(['ls', `${reg.host}/${uniqueRepo('never-pushed')}:v1`]), 4, reg.host, 'not found')
    expectOneLineError(await cli.run(['inspect', ref.replace(/:v1$/, ':v9')]), 4, 'v9')
  })

  it.each([
    ['uppercase repository', '127.0.0.1:5000/Bad/Name:v1'],
    ['a scheme', 'http://127.0.0.1:5000/repo:v1'],
    ['a short digest', '127.0.0.1:5000/repo@sha256:abc'],
    ['a bad tag', '127.0.0.1:5000/repo:bad!tag'],
    ['an empty reference', ''],
    ['a trailing slash', '127.0.0.1:5000/repo/'],
  ])('an invalid reference (%s) exits 2', async (_why, text) => {
    const cli = await session()
    expectOneLineError(await cli.run(['ls', text]), 2, 'invalid image reference')
  })

  it('inspect and cat reject an invalid reference the same way', async () => {
    const cli = await session()
    expectOneLineError(await cli.run(['inspect', 'Bad/Name']), 2, 'invalid image reference', '"Bad/Name"')
    expectOneLineError(await cli.run(['cat', '127.0.0.1:5000/repo@sha256:abc', 'x']), 2, 'invalid image reference', 'sha256:<64 hex digits>')
  })

  it('--username without --password-stdin (and the reverse) exits 2', async () => {
    const cli = await session()
    expectOneLineError(await cli.run(['ls', ref, '--username', 'alice']), 2, '--password-stdin')
    expectOneLineError(await cli.run(['ls', ref, '--password-stdin'], { input: 'x\n' }), 2, '--username')
  })

  it('push of a missing or empty directory exits 2', async () => {
    const cli = await session()
    const empty = await tempDir()
    expectOneLineError(await cli.run(['push', join(empty, 'nope'), `${reg.host}/${uniqueRepo('nodir')}:v1`, '--no-progress']), 2, 'nope')
    expectOneLineError(await cli.run(['push', empty, `${reg.host}/${uniqueRepo('emptydir')}:v1`, '--no-progress']), 2, 'no files')
  })
})

// ---------------------------------------------------------------------------------------------------------

describe.concurrent('tar layers written by GNU tar and by hand', () => {
  let src: string
  const longDir = `model/${'d'.repeat(70)}/${'e'.repeat(70)}`
  const longFile = `${longDir}/${'f'.repeat(120)}.json` // > 255 bytes: needs PAX path / GNU long name
  const contents: Record<string, Buffer> = {}

  beforeAll(async () => {
    src = await tempDir('cnaifs-tarsrc-')
    const files: Record<string, Buffer> = {
      'model/config.json': Buffer.from('{"model_type":"llama"}\n'),
      'model/weights/shard-1.bin': seededBytes(70_000, 'shard-1'),
      'model/weights/shard-2.bin': seededBytes(1_000, 'shard-2'),
      [longFile]: seededBytes(3_000, 'long'),
    }
    for (const [p, data] of Object.entries(files)) {
      await mkdir(join(src, p, '..'), { recursive: true })
      await writeFile(join(src, p), data)
      contents[p] = data
    }
    await mkdir(join(src, 'model/empty-dir'))
    await symlink('weights/shard-1.bin', join(src, 'model/latest.bin'))
    await mkdir(join(src, 'model/aliases'))
    await symlink('../weights', join(src, 'model/aliases/current')) // a directory symlink
    await symlink('../latest.bin', join(src, 'model/aliases/chain')) // a chain across directories
    await symlink('loop', join(src, 'model/aliases/loop'))
    await link(join(src, 'model/weights/shard-2.bin'), join(src, 'model/weights/shard-2-hardlink.bin'))
    expect(longFile.length).toBeGreaterThan(255)
  })

  const tarArgs = (format: string) => [`--format=${format}`, '--sort=name', '--owner=1000', '--group=0', '--numeric-owner', '--mtime=@1700000000', '-C', src, '.']

  it.each(['pax', 'gnu'])('a %s tree with long names, symlinks, hard links and directories', async (format) => {
    const tar = await gnuTar(tarArgs(format))
    expect(tar.includes(Buffer.from(format === 'gnu' ? '././@LongLink' : 'path='))).toBe(true)
    const repo = uniqueRepo(`gnutar-${format}`)
    const pushed = await pushArtifact(reg.host, repo, 'v1', {
      artifactType: CNCF_ARTIFACT,
      config: { mediaType: CNCF_CONFIG, data: modelConfig('gnu-tar') },
      layers: [{ mediaType: layerType('weight', 'tar'), data: tar, annotations: { 'org.cncf.model.filepath': 'model' } }],
    })
    const cli = await session()
    const ls = await cli.run(['ls', '-R', '-l', pushed.ref])
    expectOk(ls)
    const long = parseLong(ls.stdout)
    expect([...long.keys()].sort()).toEqual([
      'model', 'model/config.json', `model/${'d'.repeat(70)}`, longDir, longFile, 'model/empty-dir', 'model/latest.bin',
      'model/aliases', 'model/aliases/current', 'model/aliases/chain', 'model/aliases/loop',
      'model/weights', 'model/weights/shard-1.bin', 'model/weights/shard-2-hardlink.bin', 'model/weights/shard-2.bin',
    ].sort())
    expect(long.get('model/latest.bin')).toMatchObject({ target: 'weights/shard-1.bin', size: 'weights/shard-1.bin'.length })
    expect(long.get('model/latest.bin')!.mode).toMatch(/^l/)
    expect(long.get('model/empty-dir')!.mode).toMatch(/^d/)
    expect(long.get('model/weights/shard-2.bin')).toMatchObject({ nlink: 2, size: 1000 })
    expect(long.get('model/weights/shard-2-hardlink.bin')).toMatchObject({ nlink: 2, size: 1000 })
    expect(long.get(longFile)).toMatchObject({ size: 3000, uid: 1000, gid: 0, date: '2023-11-14 22:13:20' })

    // Every file for one format; the long-named one (the format-specific part) for the other.
    const toCat = format === 'pax' ? Object.entries(contents) : [[longFile, contents[longFile]!] as const]
    await parallel(toCat, 2, async ([p, data]) => {
      const r = await cli.run(['cat', pushed.ref, p])
      expectOk(r)
      expect(sha256(r.stdout), p).toBe(sha256(data))
    })
    const viaLink = await cli.run(['cat', pushed.ref, 'model/latest.bin'])
    expectOk(viaLink)
    expect(sha256(viaLink.stdout)).toBe(sha256(contents['model/weights/shard-1.bin']!))
    const viaHard = await cli.run(['cat', pushed.ref, 'model/weights/shard-2-hardlink.bin'])
    expectOk(viaHard)
    expect(sha256(viaHard.stdout)).toBe(sha256(contents['model/weights/shard-2.bin']!))
    if (format === 'pax') {
      // Symlinks are followed like a mount would: each hop relative to its own directory, in every component.
      const chain = await cli.run(['cat', pushed.ref, 'model/aliases/chain'])
      expectOk(chain)
      expect(sha256(chain.stdout)).toBe(sha256(contents['model/weights/shard-1.bin']!))
      const viaDir = await cli.run(['cat', pushed.ref, 'model/aliases/current/shard-2.bin'])
      expectOk(viaDir)
      expect(sha256(viaDir.stdout)).toBe(sha256(contents['model/weights/shard-2.bin']!))
      expectOneLineError(await cli.run(['cat', pushed.ref, 'model/aliases/loop']), 4, 'model/aliases/loop')
    }

    const inspect = await cli.run(['inspect', '--json', pushed.ref])
    expectOk(inspect)
    expect(JSON.parse(inspect.stdout.toString()).files).toEqual({ count: 4, bytes: 70_000 + 1_000 + 3_000 + 23 })
  })

  it('a KitOps ModelKit: directory-tree tar layers, uid 1000, mtime cleared', async () => {
    const kit = await tempDir('cnaifs-kit-')
    await mkdir(join(kit, 'models/llm/tokenizer'), { recursive: true })
    await mkdir(join(kit, 'src'), { recursive: true })
    await writeFile(join(kit, 'models/llm/model.gguf'), seededBytes(20_000, 'gguf'))
    await writeFile(join(kit, 'models/llm/tokenizer/vocab.txt'), 'a\nb\n')
    await writeFile(join(kit, 'src/serve.py'), 'print(1)\n')
    await chmod(join(kit, 'src/serve.py'), 0o755)
    const kitTar = (dir: string) => gnuTar(['--format=pax', '--sort=name', '--owner=1000', '--group=0', '--numeric-owner', '--mtime=@0', '-C', kit, dir])
    const kitfile = { manifestVersion: '1.0.0', package: { name: 'kit-llm', version: '1.2.3', authors: ['kit'] }, model: { name: 'llm', path: 'models/llm' }, code: [{ path: 'src' }] }
    const pushed = await pushArtifact(reg.host, uniqueRepo('kitops'), 'latest', {
      artifactType: 'application/vnd.kitops.modelkit.manifest.v1+json',
      config: { mediaType: 'application/vnd.kitops.modelkit.config.v1+json', data: Buffer.from(JSON.stringify(kitfile)) },
      layers: [
        { mediaType: 'application/vnd.kitops.modelkit.model.v1.tar', data: await kitTar('models') },
        { mediaType: 'application/vnd.kitops.modelkit.code.v1.tar', data: await kitTar('src') },
      ],
    })
    const cli = await session()
    const ls = await cli.run(['ls', '-R', '-l', pushed.ref])
    expectOk(ls)
    const long = parseLong(ls.stdout)
    expect([...long.keys()]).toEqual(['models', 'models/llm', 'models/llm/model.gguf', 'models/llm/tokenizer', 'models/llm/tokenizer/vocab.txt', 'src', 'src/serve.py'])
    for (const l of long.values()) expect(l).toMatchObject({ uid: 1000, gid: 0, date: '1970-01-01 00:00:00' })
    expect(long.get('src/serve.py')!.mode).toBe('-rwxr-xr-x')
    expect(long.get('models/llm/model.gguf')!.size).toBe(20_000)
    const cat = await cli.run(['cat', pushed.ref, 'models/llm/tokenizer/vocab.txt'])
    expectOk(cat)
    expect(cat.stdout.toString()).toBe('a\nb\n')
    const inspect = await cli.run(['inspect', '--json', pushed.ref])
    expectOk(inspect)
    expect(JSON.parse(inspect.stdout.toString())).toMatchObject({ family: 'kitops', config: { name: 'kit-llm', version: '1.2.3' }, files: { count: 3 } })
  })

  it('sizes from a PAX size record and from a GNU base-256 size field (as written for > 8 GiB files)', async () => {
    const paxData = seededBytes(12_345, 'pax-size')
    const b256Data = seededBytes(4_321, 'base256')
    const paxTar = buildTar([{ name: 'weights/pax-sized.bin', data: paxData, pax: { size: String(paxData.length) } }])
    // The ustar size field says 0: only the PAX record gives the real size.
    expect(paxTar.includes(Buffer.from(`size=${paxData.length}\n`))).toBe(true)
    const sizeField = Buffer.alloc(12)
    sizeField[0] = 0x80
    sizeField.writeUIntBE(b256Data.length, 6, 6)
    const b256Tar = Buffer.concat([tarHeader({ name: 'weights/base256.bin', sizeField, magic: 'gnu' }), b256Data, tarPad(b256Data.length), Buffer.alloc(1024)])
    const pushed = await pushArtifact(reg.host, uniqueRepo('pax-size'), 'v1', {
      artifactType: CNCF_ARTIFACT,
      config: { mediaType: CNCF_CONFIG, data: modelConfig('pax') },
      layers: [
        { mediaType: layerType('weight', 'tar'), data: paxTar, annotations: { 'org.cncf.model.filepath': 'weights/pax-sized.bin' } },
        { mediaType: layerType('weight', 'tar'), data: b256Tar, annotations: { 'org.cncf.model.filepath': 'weights/base256.bin' } },
      ],
    })
    const cli = await session()
    const ls = await cli.run(['ls', '-l', pushed.ref, 'weights'])
    expectOk(ls)
    const long = parseLong(ls.stdout)
    expect(long.get('pax-sized.bin')?.size).toBe(12_345)
    expect(long.get('base256.bin')?.size).toBe(4_321)
    for (const [p, data] of [['weights/pax-sized.bin', paxData], ['weights/base256.bin', b256Data]] as const) {
      const cat = await cli.run(['cat', pushed.ref, p])
      expectOk(cat)
      expect(sha256(cat.stdout)).toBe(sha256(data))
    }
  })

  it('places tar entries by their names inside the tar, not by the path annotation', async () => {
    const data = Buffer.from('category tar\n')
    const pushed = await pushArtifact(reg.host, uniqueRepo('tar-names'), 'v1', {
      artifactType: CNCF_ARTIFACT,
      config: { mediaType: CNCF_CONFIG, data: modelConfig('names') },
      layers: [{ mediaType: layerType('doc', 'tar'), data: buildTar([{ name: 'docs/real-name.md', data }]), annotations: { 'org.cncf.model.filepath': 'docs.tar' } }],
    })
    const cli = await session()
    const ls = await cli.run(['ls', '-R', pushed.ref])
    expectOk(ls)
    expect(lines(ls.stdout)).toEqual(['docs', 'docs/real-name.md'])
  })
})

// ---------------------------------------------------------------------------------------------------------

describe.concurrent('hostile and broken artifacts', () => {
  const good = Buffer.from('fine\n')

  async function pushWithTar(name: string, tar: Buffer): Promise<Awaited<ReturnType<typeof pushArtifact>>> {
    return pushArtifact(reg.host, uniqueRepo(name), 'v1', {
      artifactType: CNCF_ARTIFACT,
      config: { mediaType: CNCF_CONFIG, data: modelConfig(name) },
      layers: [
        { mediaType: layerType('doc', 'raw'), data: good, annotations: { 'org.cncf.model.filepath': 'README.md' } },
        { mediaType: layerType('weight', 'tar'), data: tar, annotations: { 'org.cncf.model.filepath': 'weights' } },
      ],
    })
  }

  const data = Buffer.from('evil bytes\n')
  it.each([
    ['../evil', buildTar([{ name: '../evil', data }]), ['"../evil"', "'..'"]],
    ['/etc/passwd', buildTar([{ name: '/etc/passwd', data }]), ['"/etc/passwd"', 'absolute path']],
    ['ok/../../evil in a PAX path', buildTar([{ name: 'innocent', data, pax: { path: 'ok/../../evil' } }]), ['"ok/../../evil"', "'..'"]],
    ['a hard link to ../x', buildTar([{ name: 'a', data }, { name: 'b', type: '1', linkname: '../x' }]), ['"b"', '../x']],
    ['a truncated header', Buffer.concat([buildTar([{ name: 'ok.bin', data }]).subarray(0, 1024), tarHeader({ name: 'cut.bin', size: 10 }).subarray(0, 200)]), ['truncated archive', 'offset 1024']],
    ['a size that runs past the blob', Buffer.concat([tarHeader({ name: 'big.bin', size: 1 << 20 }), data, tarPad(data.length), Buffer.alloc(1024)]), ['"big.bin"', 'runs past the end']],
  ])('ls rejects a tar with %s: exit 6, one line naming the layer and the entry, nothing placed', async (name, tar, fragments) => {
    const pushed = await pushWithTar(name, tar)
    const cli = await session()
    const r = await cli.run(['ls', '-R', pushed.ref])
    expectOneLineError(r, 6, `layer 1 (${pushed.layerDigests[1]!.slice(0, 19)}`, ...fragments)
    expect(r.stdout.length).toBe(0)
    expect(await indexFiles(cli.cacheDir)).toEqual([])
    if (name === '../evil') {
      // inspect refuses too (it is not an "unsupported layer"), and cat cannot reach the good file either.
      expectOneLineError(await cli.run(['inspect', pushed.ref]), 6, 'layer 1')
      const cat = await cli.run(['cat', pushed.ref, 'README.md'])
      expect(cat.code).toBe(6)
      expect(cat.stdout.length).toBe(0)
    }
  })

  it('two layers colliding on the same path: the error names both', async () => {
    const a = Buffer.from('first\n')
    const b = Buffer.from('second\n')
    const pushed = await pushArtifact(reg.host, uniqueRepo('collide'), 'v1', {
      artifactType: CNCF_ARTIFACT,
      config: { mediaType: CNCF_CONFIG, data: modelConfig('collide') },
      layers: [
        { mediaType: layerType('weight', 'raw'), data: a, annotations: { 'org.cncf.model.filepath': 'weights/model.bin' } },
        { mediaType: layerType('weight', 'tar'), data: buildTar([{ name: 'weights/model.bin', data: b }]), annotations: { 'org.cncf.model.filepath': 'weights/model.bin' } },
      ],
    })
    const cli = await session()
    const r = await cli.run(['ls', pushed.ref])
    expectOneLineError(r, 6, `layer 0 (${pushed.layerDigests[0]!.slice(0, 19)}`, `layer 1 (${pushed.layerDigests[1]!.slice(0, 19)}`, 'collides', 'weights/model.bin')
    expect(await indexFiles(cli.cacheDir)).toEqual([])
  })

  it('a file whose parent is a file in another layer is refused, naming both', async () => {
    const pushed = await pushArtifact(reg.host, uniqueRepo('parent-file'), 'v1', {
      artifactType: CNCF_ARTIFACT,
      config: { mediaType: CNCF_CONFIG, data: modelConfig('parent') },
      layers: [
        { mediaType: layerType('doc', 'raw'), data: good, annotations: { 'org.cncf.model.filepath': 'docs' } },
        { mediaType: layerType('doc', 'raw'), data: good, annotations: { 'org.cncf.model.filepath': 'docs/readme.md' } },
      ],
    })
    const cli = await session()
    expectOneLineError(await cli.run(['ls', pushed.ref]), 6, 'layer 1', 'layer 0', 'docs')
  })

  it('a raw layer without a path annotation is a clear error; the OCI title is used when present', async () => {
    const pushed = await pushArtifact(reg.host, uniqueRepo('no-path'), 'v1', {
      artifactType: CNCF_ARTIFACT,
      config: { mediaType: CNCF_CONFIG, data: modelConfig('no-path') },
      layers: [{ mediaType: layerType('weight', 'raw'), data: good }],
    })
    const cli = await session()
    expectOneLineError(await cli.run(['ls', pushed.ref]), 6, `layer 0 (${pushed.layerDigests[0]!.slice(0, 19)}`, 'path annotation')

    const titled = await pushArtifact(reg.host, uniqueRepo('titled'), 'v1', {
      artifactType: CNCF_ARTIFACT,
      config: { mediaType: CNCF_CONFIG, data: modelConfig('titled') },
      // a non-spec weight form (.safetensors) is read as raw
      layers: [{ mediaType: 'application/vnd.cncf.model.weight.v1.safetensors', data: good, annotations: { 'org.opencontainers.image.title': 'model.safetensors' } }],
    })
    const ls = await cli.run(['ls', '-l', titled.ref])
    expectOk(ls)
    expect(parseLong(ls.stdout).get('model.safetensors')).toMatchObject({ size: good.length, mode: '-r--r--r--' })
    const cat = await cli.run(['cat', titled.ref, 'model.safetensors'])
    expectOk(cat)
    expect(cat.stdout.equals(good)).toBe(true)
  })

  it('a manifest that is not a model names its artifactType and config media type', async () => {
    const pushed = await pushArtifact(reg.host, uniqueRepo('plain-image'), 'v1', {
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', data: Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}') },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', data: buildTar([{ name: 'bin/sh', data: good }]) }],
    })
    const cli = await session()
    for (const cmd of ['ls', 'inspect']) {
      expectOneLineError(await cli.run([cmd, pushed.ref]), 6, 'not a model', 'artifactType (none)', 'application/vnd.oci.image.config.v1+json')
    }
    const helm = await pushArtifact(reg.host, uniqueRepo('helm'), 'v1', {
      artifactType: 'application/vnd.cncf.helm.chart.v1',
      config: { mediaType: 'application/vnd.cncf.helm.config.v1+json', data: Buffer.from('{}') },
      layers: [],
    })
    expectOneLineError(await cli.run(['ls', helm.ref]), 6, 'application/vnd.cncf.helm.chart.v1', 'application/vnd.cncf.helm.config.v1+json')
  })

  it('a tar+gzip layer that cannot be indexed: ls exits 6 naming the layer, inspect shows the files as unavailable', async () => {
    const pushed = await pushArtifact(reg.host, uniqueRepo('gzip'), 'v1', {
      artifactType: CNCF_ARTIFACT,
      config: { mediaType: CNCF_CONFIG, data: modelConfig('gzip') },
      layers: [{ mediaType: layerType('weight', 'tar+gzip'), data: Buffer.from('not really gzip'), annotations: { 'org.cncf.model.filepath': 'w' } }],
    })
    const cli = await session()
    expectOneLineError(await cli.run(['ls', pushed.ref]), 6, 'layer 0', 'tar+gzip')
    const inspect = await cli.run(['inspect', '--json', pushed.ref])
    expectOk(inspect)
    expect(JSON.parse(inspect.stdout.toString()).files.unavailable).toContain('tar+gzip')
  })
})

// ---------------------------------------------------------------------------------------------------------

/** A fake registry that answers /v2/ and every manifest GET with fixed bytes (and optional headers). */
async function startFakeRegistry(manifest: Buffer, headers: Record<string, string> = {}): Promise<{ host: string; stop: () => Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.url === '/v2/') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
    } else if (/\/manifests\//.test(req.url ?? '')) {
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'content-length': manifest.length, ...headers }).end(manifest)
    } else {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}')
    }
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as net.AddressInfo).port
  return {
    host: `127.0.0.1:${port}`,
    stop: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }),
  }
}

describe.concurrent('integrity', () => {
  let model: ModelDir
  let repo: string
  beforeAll(async () => {
    model = await makeModelDir({ 'weights/a.safetensors': 200_000, 'config.json': '{"x":1}\n' }, 'integrity')
    repo = uniqueRepo('integrity')
    await pushModelDir(model.dir, `${reg.host}/${repo}:raw`)
    await pushModelDir(model.dir, `${reg.host}/${repo}:tar`, { format: 'tar' })
  })

  it('cat of a raw layer served with wrong bytes exits non-zero with a digest mismatch', async () => {
    const cli = await session()
    const proxy = await proxyTo(reg.url)
    proxy.set({ corruptBlobBodies: true })
    const r = await cli.run(['cat', `${proxy.host}/${repo}:raw`, 'weights/a.safetensors'])
    expectOneLineError(r, 6, 'digest mismatch', 'weights/a.safetensors')
    expect(proxy.blobRequests().length).toBeGreaterThan(0)
  })

  it('cat of a tar layer served with wrong bytes writes nothing and exits 6', async () => {
    const cli = await session()
    const proxy = await proxyTo(reg.url)
    const ref = `${proxy.host}/${repo}:tar`
    expectOk(await cli.run(['ls', '-R', ref])) // index built from good bytes
    proxy.set({ corruptBlobBodies: true })
    const r = await cli.run(['cat', ref, 'weights/a.safetensors'])
    expectOneLineError(r, 6, 'digest mismatch')
    expect(r.stdout.length).toBe(0)
  })

  it('ls of a tar model whose headers come back corrupted fails without caching an index', async () => {
    const cli = await session()
    const proxy = await proxyTo(reg.url)
    proxy.set({ corruptBlobBodies: true })
    const r = await cli.run(['ls', '-R', `${proxy.host}/${repo}:tar`])
    expectOneLineError(r, 6, /layer [01] \(sha256:/, 'checksum')
    expect(await indexFiles(cli.cacheDir)).toEqual([])
  })

  it('a registry answering a different manifest than the pinned digest is refused', async () => {
    const real = await fetch(`${reg.url}/v2/${repo}/manifests/raw`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })
    const bytes = Buffer.from(await real.arrayBuffer())
    const tampered = Buffer.from(bytes.toString().replace('"weights/a.safetensors"', '"weights/b.safetensors"'))
    expect(tampered.equals(bytes)).toBe(false)
    const fake = await startFakeRegistry(tampered)
    try {
      const cli = await session()
      const pinned = `${fake.host}/${repo}@sha256:${sha256(bytes)}`
      for (const cmd of ['ls', 'inspect']) expectOneLineError(await cli.run([cmd, pinned]), 6, 'digest mismatch', `sha256:${sha256(bytes)}`, `sha256:${sha256(tampered)}`)
    } finally {
      await fake.stop()
    }
    // A tag whose Docker-Content-Digest header disagrees with the body is refused too.
    const lying = await startFakeRegistry(tampered, { 'docker-content-digest': `sha256:${sha256(bytes)}` })
    try {
      const cli = await session()
      expectOneLineError(await cli.run(['ls', `${lying.host}/${repo}:raw`]), 6, 'digest mismatch')
    } finally {
      await lying.stop()
    }
  })
})

// ---------------------------------------------------------------------------------------------------------

function basicAuthB64(user: string, pass: string): string {
  return Buffer.from(`${user}:${pass}`).toString('base64')
}

function expectNoSecret(r: CliResult, user: string, password: string): void {
  for (const text of [r.stderr, r.stdout.toString('latin1')]) {
    expect(text).not.toContain(password)
    expect(text).not.toContain(basicAuthB64(user, password))
  }
}

/** Credential sources for one registry: Docker config.json, podman auth.json, and a credential helper. */
async function credentialEnvs(host: string, user: string, password: string): Promise<Record<'docker' | 'podman' | 'helper', Record<string, string>> & { helperLog: string }> {
  const docker = await tempDir('cnaifs-docker-')
  await writeFile(join(docker, 'config.json'), JSON.stringify({ auths: { [host]: { auth: basicAuthB64(user, password) } } }))
  const podmanDir = await tempDir('cnaifs-podman-')
  const podmanFile = join(podmanDir, 'auth.json')
  await writeFile(podmanFile, JSON.stringify({ auths: { [host]: { auth: basicAuthB64(user, password) } } }))
  const helperDir = await tempDir('cnaifs-helper-')
  const bin = join(helperDir, 'bin')
  await mkdir(bin)
  const helperLog = join(helperDir, 'calls.log')
  await writeFile(join(bin, 'docker-credential-test'), [
    '#!/bin/sh',
    'read server',
    `echo "$1 $server" >> '${helperLog}'`,
    `printf '{"ServerURL":"%s","Username":"${user}","Secret":"${password}"}' "$server"`,
    '',
  ].join('\n'))
  await chmod(join(bin, 'docker-credential-test'), 0o755)
  await writeFile(join(helperDir, 'config.json'), JSON.stringify({ credHelpers: { [host]: 'test' }, auths: { [host]: { auth: basicAuthB64(user, 'not-this-one') } } }))
  return {
    docker: { DOCKER_CONFIG: docker },
    podman: { REGISTRY_AUTH_FILE: podmanFile },
    helper: { DOCKER_CONFIG: helperDir, PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}` },
    helperLog,
  }
}

describe.concurrent.each([
  ['basic', () => inject('basicRegistry')],
  ['token', () => inject('tokenRegistry')],
] as const)('%s-auth registry', (kind, info) => {
  const r = info()
  let ref: string
  let model: ModelDir
  let envs: Awaited<ReturnType<typeof credentialEnvs>>

  beforeAll(async () => {
    model = await makeModelDir({ 'weights/w.safetensors': 80_000, 'config.json': '{}\n' }, `auth-${kind}`)
    ref = `${r.host}/${uniqueRepo(`auth-${kind}`)}:v1`
    const pushed = await runCli(['--cache-dir', await tempDir(), 'push', model.dir, ref, '--format', 'tar', '--no-progress', '--username', r.username, '--password-stdin'], { input: `${r.password}\n` })
    expectOk(pushed)
    expectNoSecret(pushed, r.username, r.password)
    envs = await credentialEnvs(r.host, r.username, r.password)
  })

  it('without credentials: exit 3, one line naming the registry, never the password', async () => {
    const cli = await session()
    for (const cmd of [['ls', ref], ['cat', ref, 'config.json']]) {
      const res = await cli.run(cmd)
      expectOneLineError(res, 3, r.host, /authentication|credentials/)
      expectNoSecret(res, r.username, r.password)
    }
  })

  it('with a wrong password: exit 3 saying the credentials were refused, without echoing them', async () => {
    const cli = await session()
    const res = await cli.run(['ls', ref, '--username', r.username, '--password-stdin'], { input: 'wrong-password-123\n' })
    expectOneLineError(res, 3, r.host, 'refused')
    expect(res.stderr).not.toContain('wrong-password-123')
  })

  it('with --username and --password-stdin: ls and cat work (and debug logs hold no secret)', async () => {
    const cli = await session()
    const opts = { input: `${r.password}\n` }
    const ls = await cli.run(['ls', '-R', ref, '--username', r.username, '--password-stdin'], opts)
    expectOk(ls)
    expect(lines(ls.stdout)).toEqual(['config.json', 'weights', 'weights/w.safetensors'])
    const cat = await cli.run(['--log-level', 'debug', 'cat', ref, 'weights/w.safetensors', '--username', r.username, '--password-stdin'], opts)
    expectOk(cat)
    expect(sha256(cat.stdout)).toBe(model.files['weights/w.safetensors']!.sha256)
    expectNoSecret(ls, r.username, r.password)
    expectNoSecret(cat, r.username, r.password)
  })

  it.each(['docker', 'podman', 'helper'] as const)('with credentials from %s config', async (source) => {
    const cli = await session()
    // A cold ls -R of this tar model reads every layer's headers: manifest and blob requests both authenticate.
    const ls = await cli.run(['ls', '-l', '-R', ref], { env: envs[source] })
    expectOk(ls)
    expect(parseLong(ls.stdout).get('weights/w.safetensors')?.size).toBe(80_000)
    expectNoSecret(ls, r.username, r.password)
    if (source === 'helper') {
      // The helper won over the inline auth of the same file, and was asked `get` with the registry host.
      const calls = (await readFile(envs.helperLog, 'utf8')).trim().split('\n')
      expect(calls.length).toBeGreaterThan(0)
      for (const c of calls) expect(c).toBe(`get ${r.host}`)
    }
  })
})

describe.concurrent('token caching', () => {
  let svc: TokenService
  let registry: RegistryProcess
  const user = { username: 'carol', password: 'c4rol-token-pw' }
  let ref: string

  beforeAll(async () => {
    svc = await startTokenService(user)
    registry = await startRegistry({ auth: { kind: 'token', realm: svc.url, service: svc.service, issuer: svc.issuer, rootCertBundlePath: svc.rootCertBundlePath } })
    const model = await makeModelDir(Object.fromEntries(Array.from({ length: 6 }, (_, i) => [`part-${i}.bin`, 2_000 + i])), 'token-cache')
    ref = `${registry.host}/${uniqueRepo('token-cache')}:v1`
    expectOk(await runCli(['--cache-dir', await tempDir(), 'push', model.dir, ref, '--format', 'tar', '--no-progress', '--username', user.username, '--password-stdin'], { input: user.password }))
  })
  afterAll(async () => {
    await registry?.stop()
    await svc?.stop()
  })

  it('one token request serves a whole ls -R (manifest + every layer) and a whole inspect', async () => {
    const cli = await session()
    const opts = { input: user.password }
    const auth = ['--username', user.username, '--password-stdin']
    let before = svc.requests
    const ls = await cli.run(['ls', '-R', ref, ...auth], opts)
    expectOk(ls)
    expect(lines(ls.stdout)).toHaveLength(6)
    expect(svc.requests - before).toBe(1)

    before = svc.requests
    const cold = await session()
    const inspect = await cold.run(['inspect', ref, ...auth], opts)
    expectOk(inspect)
    expect(inspect.stdout.toString()).toMatch(/^Files: +6 /m)
    expect(svc.requests - before).toBe(1)

    // Repeated reads keep working (a fresh process gets a fresh token).
    for (let i = 0; i < 2; i++) {
      before = svc.requests
      const cat = await cli.run(['cat', ref, 'part-3.bin', ...auth], opts)
      expectOk(cat)
      expect(cat.stdout.length).toBe(2_003)
      expect(svc.requests - before).toBe(1)
    }
  })
})

// ---------------------------------------------------------------------------------------------------------

describe.concurrent('network faults', () => {
  let model: ModelDir
  let repo: string
  const big = 'weights/big.safetensors'

  beforeAll(async () => {
    model = await makeModelDir({ [big]: 1_000_000, 'config.json': '{"faults":true}\n' }, 'faults')
    repo = uniqueRepo('faults')
    await pushModelDir(model.dir, `${reg.host}/${repo}:raw`)
    await pushModelDir(model.dir, `${reg.host}/${repo}:tar`, { format: 'tar' })
  })

  it.each(['raw', 'tar'])('connection reset mid-body (twice): cat of a %s layer still outputs the exact bytes', async (tag) => {
    const cli = await session()
    const proxy = await proxyTo(reg.url)
    const ref = `${proxy.host}/${repo}:${tag}`
    expectOk(await cli.run(['ls', ref]))
    proxy.reset()
    proxy.set({ resetAfterBytes: 250_000, resetCount: 2 })
    const r = await cli.run(['cat', ref, big])
    expectOk(r)
    expect(r.stdout.length).toBe(1_000_000)
    expect(sha256(r.stdout)).toBe(model.files[big]!.sha256)
    const reqs = proxy.blobRequests()
    expect(reqs.length).toBeGreaterThanOrEqual(3)
    expect(reqs.slice(0, 2).map((e) => e.bytes)).toEqual([250_000, 250_000])
    // resumed where the body was cut, not from the start
    expect(reqs[1]!.range).toMatch(new RegExp(`^bytes=${Number(/bytes=(\d+)/.exec(reqs[0]!.range!)![1]) + 250_000}-`))
  })

  it('503 with Retry-After, twice: cat waits as told and succeeds', async () => {
    const cli = await session()
    const proxy = await proxyTo(reg.url)
    proxy.set({ failStatus: 503, failCount: 2, retryAfterSeconds: 1 })
    const r = await cli.run(['cat', `${proxy.host}/${repo}:raw`, big])
    expectOk(r)
    expect(sha256(r.stdout)).toBe(model.files[big]!.sha256)
    expect(proxy.blobRequests().map((e) => e.status)).toEqual([503, 503, 206])
    expect(r.durationMs).toBeGreaterThanOrEqual(2000)
  })

  it('429 three times (no Retry-After): inspect backs off and succeeds', async () => {
    const cli = await session()
    const proxy = await proxyTo(reg.url)
    proxy.set({ failStatus: 429, failCount: 3 })
    const r = await cli.run(['inspect', '--json', `${proxy.host}/${repo}:tar`])
    expectOk(r)
    expect(JSON.parse(r.stdout.toString()).files.count).toBe(2)
    expect(proxy.blobRequests().slice(0, 3).map((e) => e.status)).toEqual([429, 429, 429])
  })

  it('a dead registry: exit 5 with one line, within a bounded time', async () => {
    const cli = await session()
    const proxy = await proxyTo(reg.url)
    proxy.set({ down: true })
    for (const cmd of [['ls', `${proxy.host}/${repo}:raw`], ['cat', `${proxy.host}/${repo}:raw`, big]]) {
      const r = await cli.run(cmd, { timeoutMs: 20_000 })
      expectOneLineError(r, 5, proxy.host, 'unreachable')
      expect(r.durationMs).toBeLessThan(15_000)
    }
    // Nothing listening at all behaves the same.
    const port = await freePort()
    const refused = await cli.run(['ls', `127.0.0.1:${port}/${repo}:raw`], { timeoutMs: 20_000 })
    expectOneLineError(refused, 5, `127.0.0.1:${port}`)
  })

  it('a registry that never answers: --request-timeout bounds the wait, exit 5', async () => {
    const cli = await session()
    const proxy = await proxyTo(reg.url)
    proxy.set({ blackhole: true })
    const r = await cli.run(['ls', `${proxy.host}/${repo}:raw`, '--request-timeout', '0.3'], { timeoutMs: 20_000 })
    expectOneLineError(r, 5, proxy.host)
    expect(r.durationMs).toBeLessThan(10_000)
  })

  it('with the registry down, a model listed before is served from the persisted index', async () => {
    const cli = await session()
    const proxy = await proxyTo(reg.url)
    const ref = `${proxy.host}/${repo}:tar`
    const first = await cli.run(['ls', '-l', '-R', ref])
    expectOk(first)
    proxy.set({ down: true })
    const offline = await cli.run(['ls', '-l', '-R', ref], { timeoutMs: 20_000 })
    expectOk(offline)
    expect(offline.stdout.equals(first.stdout)).toBe(true)
  })
})

// ---------------------------------------------------------------------------------------------------------

describe.concurrent('persisted index and blob request counts', () => {
  const N = 50
  let raw: { repo: string; files: ModelDir['files'] }
  let tar: { repo: string; files: ModelDir['files'] }

  beforeAll(async () => {
    const spec = Object.fromEntries(Array.from({ length: N }, (_, i) => [`shards/group-${i % 5}/file-${String(i).padStart(3, '0')}.bin`, 500 + i * 37]))
    const model = await makeModelDir(spec, 'fifty')
    raw = { repo: uniqueRepo('fifty-raw'), files: model.files }
    tar = { repo: uniqueRepo('fifty-tar'), files: model.files }
    await pushModelDir(model.dir, `${reg.host}/${raw.repo}:v1`)
    await pushModelDir(model.dir, `${reg.host}/${tar.repo}:v1`, { format: 'tar' })
  })

  it(`ls -R of a ${N}-file raw model makes no blob request, cold or warm`, async () => {
    const cli = await session()
    const proxy = await proxyTo(reg.url)
    const r = await cli.run(['ls', '-R', `${proxy.host}/${raw.repo}:v1`])
    expectOk(r)
    expect(lines(r.stdout).filter((l) => l.endsWith('.bin'))).toHaveLength(N)
    expect(proxy.blobRequests()).toEqual([])
    const warm = await cli.run(['ls', '-R', `${proxy.host}/${raw.repo}:v1`])
    expectOk(warm)
    expect(warm.stdout.equals(r.stdout)).toBe(true)
    expect(proxy.blobRequests()).toEqual([])
  })

  it(`ls -R of a ${N}-file tar model: at most one ranged request per layer cold, none warm`, async () => {
    const cli = await session()
    const proxy = await proxyTo(reg.url)
    const ref = `${proxy.host}/${tar.repo}:v1`
    const cold = await cli.run(['ls', '-l', '-R', ref])
    expectOk(cold)
    const long = parseLong(cold.stdout)
    for (const [p, f] of Object.entries(tar.files)) expect(long.get(p)?.size, p).toBe(f.size)
    const reqs = proxy.blobRequests()
    expect(reqs.length).toBeGreaterThan(0)
    expect(reqs.length).toBeLessThanOrEqual(N)
    for (const e of reqs) expect(e.range, e.path).toMatch(/^bytes=\d+-\d+$/)
    expect(new Set(reqs.map((e) => e.path)).size).toBe(reqs.length) // each layer at most once

    const index = await indexFiles(cli.cacheDir)
    expect(index).toHaveLength(1)
    const manifestDigest = sha256(Buffer.from(await (await fetch(`${reg.url}/v2/${tar.repo}/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })).arrayBuffer()))
    expect(index[0]).toBe(`${manifestDigest}.json`)

    proxy.reset()
    const warm = await cli.run(['ls', '-l', '-R', ref])
    expectOk(warm)
    expect(warm.stdout.equals(cold.stdout)).toBe(true)
    expect(proxy.blobRequests()).toEqual([])
    // The persisted index serves other commands too: inspect's file count needs no layer read.
    const inspect = await cli.run(['inspect', '--json', ref])
    expectOk(inspect)
    expect(JSON.parse(inspect.stdout.toString()).files.count).toBe(N)
    expect(proxy.blobRequests().filter((e) => e.range)).toEqual([]) // only the config blob, read whole
  })
})
