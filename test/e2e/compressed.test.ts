/**
 * End-to-end tests of tar+gzip and tar+zstd layers (issue 4) and KitOps ModelKits: archives made by the real
 * tools (GNU tar, gzip -6, pigz, zstd), pushed with hand-made manifests, read back with `cnaifs cat` and
 * through `cnaifs mount`; the fault proxy counts compressed bytes and corrupts them.
 */
import { execFile, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmod, mkdir, readFile, readdir, stat, symlink, writeFile, lstat, readlink } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest'
import type {} from '../helpers/global-setup.js'
import { startProxy, type FaultProxy } from '../helpers/proxy.js'
import {
  cleanupTempDirs, describeResult, modelConfig, pushArtifact, runCli, seededBytes, sha256, textish, tempDir, uniqueRepo,
  type CliResult, type PushedArtifact,
} from '../helpers/cli.js'

const execFileAsync = promisify(execFile)
const reg = inject('registry')
const MiB = 1024 * 1024
const CNCF_ARTIFACT = 'application/vnd.cncf.model.manifest.v1+json'
const CNCF_CONFIG = 'application/vnd.cncf.model.config.v1+json'

// ---------------------------------------------------------------------------------------------------------
// Mounts and proxies, torn down whatever happens

const live = new Map<string, string>() // mountpoint -> cache dir
const proxies: FaultProxy[] = []

async function isMounted(mp: string): Promise<boolean> {
  const text = await readFile('/proc/self/mountinfo', 'utf8')
  return text.split('\n').some((l) => l.split(' ')[4] === mp)
}

afterEach(async () => {
  for (const [mp, cacheDir] of [...live]) {
    if (await isMounted(mp)) await runCli(['--cache-dir', cacheDir, 'unmount', mp], { timeoutMs: 15_000 }).catch(() => undefined)
    if (await isMounted(mp)) await execFileAsync('fusermount', ['-uz', mp]).catch(() => undefined)
    live.delete(mp)
  }
  for (const p of proxies.splice(0)) await p.stop()
})

afterAll(async () => {
  await cleanupTempDirs()
})

class Session {
  constructor(readonly cacheDir: string) {}
  static async create(): Promise<Session> {
    return new Session(await tempDir('cnaifs-cache-'))
  }
  run(args: string[], timeoutMs = 120_000): Promise<CliResult> {
    return runCli(['--cache-dir', this.cacheDir, ...args], { timeoutMs })
  }
  async mount(ref: string): Promise<string> {
    const mp = join(await tempDir('cnaifs-mp-'), 'mnt')
    live.set(mp, this.cacheDir)
    const r = await this.run(['mount', ref, mp], 180_000)
    expect(r.code, describeResult(r)).toBe(0)
    return mp
  }
  async unmount(mp: string): Promise<void> {
    const r = await this.run(['unmount', mp], 30_000)
    expect(r.code, describeResult(r)).toBe(0)
    live.delete(mp)
  }
}

function expectOk(r: CliResult): void {
  expect(r.code, describeResult(r)).toBe(0)
}

/** A read by a child process, so a failing or hanging read can never hang the test run. */
function childRead(file: string, offset: number, length: number, timeoutMs = 60_000): Promise<{ ok: boolean; code?: string; sha?: string }> {
  const script = `
const fs = require('fs'), crypto = require('crypto')
const [file, off, len] = process.argv.slice(1)
try {
  const fd = fs.openSync(file, 'r'), buf = Buffer.alloc(Number(len))
  let n = 0
  while (n < buf.length) { const r = fs.readSync(fd, buf, n, buf.length - n, Number(off) + n); if (r === 0) break; n += r }
  console.log(JSON.stringify({ ok: true, sha: crypto.createHash('sha256').update(buf.subarray(0, n)).digest('hex') }))
} catch (e) { console.log(JSON.stringify({ ok: false, code: e.code })) }`
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script, file, String(offset), String(length)], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.stdout.on('data', (c: Buffer) => (out += c.toString()))
    child.once('error', reject)
    child.once('close', () => {
      clearTimeout(timer)
      try {
        resolve(JSON.parse(out) as { ok: boolean; code?: string; sha?: string })
      } catch {
        resolve({ ok: false, code: 'TIMEOUT' })
      }
    })
  })
}

async function sh(script: string, cwd: string): Promise<void> {
  await execFileAsync('bash', ['-euo', 'pipefail', '-c', script], { cwd, maxBuffer: 64 * MiB })
}


/** Every regular file below `root` with its sha256, relative '/'-separated paths. */
async function hashTree(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  const visit = async (rel: string) => {
    for (const ent of await readdir(join(root, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${ent.name}` : ent.name
      if (ent.isDirectory()) await visit(p)
      else if (ent.isFile()) out[p] = sha256(await readFile(join(root, p)))
    }
  }
  await visit('')
  return out
}

// ---------------------------------------------------------------------------------------------------------
// The model and its archives

let work: string
let src: string
let expected: Record<string, string>
const BIG = 'model/weights.bin'
const variants = {
  'gzip -6': { form: 'tar+gzip', file: 't.gz' },
  'pigz, two members': { form: 'tar+gzip', file: 't.pigz.gz' },
  'zstd, one frame': { form: 'tar+zstd', file: 't.zst' },
  'zstd, 4 MiB frames': { form: 'tar+zstd', file: 't.frames.zst' },
} as const
type Variant = keyof typeof variants
const pushed = {} as Record<Variant, PushedArtifact>

beforeAll(async () => {
  work = await tempDir('cnaifs-ctar-')
  src = join(work, 'src')
  await mkdir(join(src, 'model/tokenizer'), { recursive: true })
  await mkdir(join(src, 'model/empty'), { recursive: true })
  await writeFile(join(src, BIG), textish(64 * MiB, 'big'))
  await writeFile(join(src, 'model/config.json'), '{"model_type":"llama"}\n')
  await writeFile(join(src, 'model/tokenizer/vocab.txt'), Array.from({ length: 50_000 }, (_, i) => `tok${i}`).join('\n'))
  await writeFile(join(src, 'model/random.bin'), seededBytes(3 * MiB + 5, 'random'))
  await symlink('weights.bin', join(src, 'model/latest.bin'))
  expected = await hashTree(src)
  await sh('tar --format=pax --sort=name --owner=1000 --group=0 --numeric-owner --mtime=@1700000000 -C src -cf t.tar .', work)
  await sh('gzip -6 -c t.tar > t.gz', work)
  await sh('head -c 30000000 t.tar | pigz -c > t.pigz.gz && tail -c +30000001 t.tar | pigz -c >> t.pigz.gz', work)
  await sh('zstd -q -c t.tar > t.zst', work)
  await sh('split -b 4M --filter="zstd -q -c" t.tar > t.frames.zst', work)
  await Promise.all((Object.keys(variants) as Variant[]).map(async (v) => {
    const { form, file } = variants[v]
    pushed[v] = await pushArtifact(reg.host, uniqueRepo(`ctar-${form}`), 'v1', {
      artifactType: CNCF_ARTIFACT,
      config: { mediaType: CNCF_CONFIG, data: modelConfig('ctar') },
      layers: [{ mediaType: `application/vnd.cncf.model.weight.v1.${form}`, data: await readFile(join(work, file)), annotations: { 'org.cncf.model.filepath': 'model' } }],
    })
  }))
}, 300_000)

describe.each(Object.keys(variants) as Variant[])('%s', (variant) => {
  it('cat returns every file byte for byte; a mount shows the tree and reads every file back', async () => {
    const cli = await Session.create()
    const ref = pushed[variant].ref
    const ls = await cli.run(['ls', '-R', '-l', ref])
    expectOk(ls)
    expect(ls.stdout.toString()).toContain('model/latest.bin -> weights.bin')
    for (const [p, hash] of Object.entries(expected)) {
      const r = await cli.run(['cat', ref, p])
      expectOk(r)
      expect(sha256(r.stdout), p).toBe(hash)
    }
    const mp = await cli.mount(ref)
    expect(await hashTree(mp)).toEqual(expected)
    expect((await stat(join(mp, 'model/empty'))).isDirectory()).toBe(true)
    expect(await readlink(join(mp, 'model/latest.bin'))).toBe('weights.bin')
    const st = await stat(join(mp, BIG))
    expect({ uid: st.uid, gid: st.gid, mtime: st.mtimeMs }).toEqual({ uid: 1000, gid: 0, mtime: 1_700_000_000_000 })
    // user.cnaifs.digest names the layer blob as the manifest does; user.cnaifs.diffid its uncompressed tar.
    const xattr = (name: string) => execFileAsync('getfattr', ['-n', name, '--only-values', join(mp, BIG)]).then((r) => r.stdout)
    expect(await xattr('user.cnaifs.digest')).toBe(JSON.parse(pushed[variant].manifest.toString()).layers[0].digest)
    expect(await xattr('user.cnaifs.diffid')).toBe('sha256:' + createHash('sha256').update(await readFile(join(work, 't.tar'))).digest('hex'))
    await cli.unmount(mp)
  }, 300_000)
})

describe.each(['gzip -6', 'zstd, 4 MiB frames'] as Variant[])('%s, indexed: a read in the middle of the 64 MiB file', (variant) => {
  it('fetches at most one checkpoint span of compressed bytes; the index is not rebuilt; corrupt bytes give EIO', async () => {
    const cli = await Session.create()
    expectOk(await cli.run(['ls', pushed[variant].pinned])) // builds the model index and the layer's checkpoint index
    const proxy = await startProxy(reg.url)
    proxies.push(proxy)
    const ref = pushed[variant].pinned.replace(reg.host, proxy.host)
    const mp = await cli.mount(ref)
    expect(proxy.blobBytes()).toBe(0) // nothing rebuilt: no full-blob read
    const layerDigest = JSON.parse(pushed[variant].manifest.toString()).layers[0].digest as string
    const index = JSON.parse(await readFile(join(cli.cacheDir, 'compressed', `${layerDigest.slice(7)}.json`), 'utf8')) as {
      checkpoints: { out: number; bit: number }[]; entries: { name: string; dataOffset: number }[]; compressed: { size: number }
    }
    const dataOffset = index.entries.find((e) => e.name === BIG)!.dataOffset
    const at = 29 * MiB + 1234
    const r = await childRead(join(mp, BIG), at, 4096)
    expect(r.ok).toBe(true)
    const big = await readFile(join(src, BIG))
    expect(r.sha).toBe(sha256(big.subarray(at, at + 4096)))
    // The cache fetches the 1 MiB block holding the read: decompression starts at the checkpoint before the
    // block and stops at its end, on compressed bytes fetched in 1 MiB verified chunks.
    const blockStart = Math.floor((dataOffset + at) / MiB) * MiB
    const i = index.checkpoints.findLastIndex((c) => c.out <= blockStart)
    const from = index.checkpoints[i]!.bit / 8
    const next = index.checkpoints.find((c) => c.out >= blockStart + MiB)
    const to = next ? next.bit / 8 : index.compressed.size
    expect(proxy.blobBytes()).toBeLessThanOrEqual(to - from + 2 * MiB)
    expect(proxy.blobBytes()).toBeLessThan(index.compressed.size / 4)

    // Compressed bytes corrupted on the way: EIO for the reader, the daemon lives on, reads recover.
    proxy.set({ corruptBlobBodies: true })
    const bad = await childRead(join(mp, BIG), 50 * MiB, 4096)
    expect(bad).toMatchObject({ ok: false, code: 'EIO' })
    const badCat = await cli.run(['cat', ref, BIG])
    expect(badCat.code, describeResult(badCat)).toBe(6)
    expect(badCat.stderr).toMatch(/^cnaifs: [^\n]*digest mismatch[^\n]*\n$/)
    proxy.set({ corruptBlobBodies: false })
    const good = await childRead(join(mp, BIG), 50 * MiB, 4096)
    expect(good.sha).toBe(sha256(big.subarray(50 * MiB, 50 * MiB + 4096)))
    await cli.unmount(mp)
  }, 300_000)
})

describe('bad compressed layers', () => {
  it('a corrupt gzip stream in the registry: cat exits 6 with one line, mount fails cleanly', async () => {
    const good = await readFile(join(work, 't.gz'))
    const bad = Buffer.from(good.subarray(0, 2 * MiB))
    for (let i = 100_000; i < 100_064; i++) bad[i]! ^= 0xa5
    const art = await pushArtifact(reg.host, uniqueRepo('badgz'), 'v1', {
      artifactType: CNCF_ARTIFACT,
      config: { mediaType: CNCF_CONFIG, data: modelConfig('badgz') },
      layers: [{ mediaType: 'application/vnd.cncf.model.weight.v1.tar+gzip', data: bad }],
    })
    const cli = await Session.create()
    const cat = await cli.run(['cat', art.ref, 'model/config.json'])
    expect(cat.code, describeResult(cat)).toBe(6)
    expect(cat.stderr).toMatch(/^cnaifs: layer 0 \([^)]*tar\+gzip\): [^\n]*gzip[^\n]*\n$/)
    const mp = join(await tempDir('cnaifs-mp-'), 'mnt')
    live.set(mp, cli.cacheDir)
    const m = await cli.run(['mount', art.ref, mp], 60_000)
    expect(m.code, describeResult(m)).not.toBe(0)
    expect(m.stderr).toContain('gzip')
    expect(await isMounted(mp)).toBe(false)
  }, 120_000)
})

describe('KitOps ModelKit', () => {
  it('directory-tree layers (tar+gzip, tar+zstd, tar) mount with uid 1000, gid 0, mtime 0', async () => {
    const kit = await tempDir('cnaifs-kit-')
    await mkdir(join(kit, 'models/llm/tokenizer'), { recursive: true })
    await mkdir(join(kit, 'src/pkg'), { recursive: true })
    await mkdir(join(kit, 'docs'), { recursive: true })
    await writeFile(join(kit, 'models/llm/model.gguf'), textish(6 * MiB, 'gguf'))
    await writeFile(join(kit, 'models/llm/tokenizer/vocab.txt'), 'a\nb\n')
    await writeFile(join(kit, 'src/pkg/serve.py'), 'print(1)\n')
    await chmod(join(kit, 'src/pkg/serve.py'), 0o755)
    await writeFile(join(kit, 'docs/README.md'), '# kit\n')
    const tarOf = (dir: string, compress: string) => sh(`tar --format=pax --sort=name --owner=1000 --group=0 --numeric-owner --mtime=@0 -C ${kit} -cf - ${dir} ${compress} > ${work}/kit-${dir}`, kit).then(() => readFile(`${work}/kit-${dir}`))
    const kitfile = { manifestVersion: '1.0.0', package: { name: 'kit-llm', version: '1.2.3' }, model: { name: 'llm', path: 'models/llm' }, code: [{ path: 'src' }], docs: [{ path: 'docs' }] }
    const art = await pushArtifact(reg.host, uniqueRepo('kitops-compressed'), 'latest', {
      artifactType: 'application/vnd.kitops.modelkit.manifest.v1+json',
      config: { mediaType: 'application/vnd.kitops.modelkit.config.v1+json', data: Buffer.from(JSON.stringify(kitfile)) },
      layers: [
        { mediaType: 'application/vnd.kitops.modelkit.model.v1.tar+gzip', data: await tarOf('models', '| gzip -6') },
        { mediaType: 'application/vnd.kitops.modelkit.code.v1.tar+zstd', data: await tarOf('src', '| zstd -q') },
        { mediaType: 'application/vnd.kitops.modelkit.docs.v1.tar', data: await tarOf('docs', '') },
      ],
    })
    const cli = await Session.create()
    const mp = await cli.mount(art.ref)
    expect(await hashTree(mp)).toEqual(await hashTree(kit))
    const all: string[] = []
    const visit = async (rel: string) => {
      for (const ent of await readdir(join(mp, rel), { withFileTypes: true })) {
        const p = rel ? `${rel}/${ent.name}` : ent.name
        all.push(p)
        if (ent.isDirectory()) await visit(p)
      }
    }
    await visit('')
    expect(all.sort()).toEqual(['docs', 'docs/README.md', 'models', 'models/llm', 'models/llm/model.gguf', 'models/llm/tokenizer', 'models/llm/tokenizer/vocab.txt', 'src', 'src/pkg', 'src/pkg/serve.py'])
    for (const p of all) {
      const st = await lstat(join(mp, p))
      expect({ p, uid: st.uid, gid: st.gid, mtime: st.mtimeMs }).toEqual({ p, uid: 1000, gid: 0, mtime: 0 })
    }
    expect((await stat(join(mp, 'src/pkg/serve.py'))).mode & 0o777).toBe(0o755)
    expect((await stat(join(mp, 'models/llm'))).isDirectory()).toBe(true)
    await cli.unmount(mp)
  }, 180_000)
})

describe('cnaifs push --format tar+gzip|tar+zstd', () => {
  it.each(['tar+gzip', 'tar+zstd'])('%s: layers the real tools decompress, diffIds of the uncompressed tars, cat byte for byte', async (format) => {
    const dir = await tempDir('cnaifs-pushsrc-')
    await mkdir(join(dir, 'sub'), { recursive: true })
    await writeFile(join(dir, 'model.safetensors'), textish(9 * MiB + 3, 'push'))
    await writeFile(join(dir, 'config.json'), '{"a":1}\n')
    await writeFile(join(dir, 'sub/README.md'), '# hi\n')
    const cli = await Session.create()
    const repo = uniqueRepo(`push-${format}`)
    const ref = `${reg.host}/${repo}:v1`
    expectOk(await cli.run(['push', dir, ref, '--format', format, '--no-progress']))
    const manifest = JSON.parse(await (await fetch(`${reg.url}/v2/${repo}/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })).text()) as {
      config: { digest: string }; layers: { mediaType: string; digest: string; annotations: Record<string, string> }[]
    }
    const config = JSON.parse(await (await fetch(`${reg.url}/v2/${repo}/blobs/${manifest.config.digest}`)).text()) as { modelfs: { diffIds: string[] } }
    const blobs = await tempDir('cnaifs-pushed-')
    for (const [i, l] of manifest.layers.entries()) {
      expect(l.mediaType).toMatch(new RegExp(`\\.v1\\.${format.replace('+', '\\+')}$`))
      const blob = Buffer.from(await (await fetch(`${reg.url}/v2/${repo}/blobs/${l.digest}`)).arrayBuffer())
      const file = join(blobs, `blob-${i}`)
      await writeFile(file, blob)
      const { stdout } = await execFileAsync('bash', ['-c', `${format === 'tar+gzip' ? 'gzip' : 'zstd -q'} -dc < ${file} | sha256sum`])
      expect('sha256:' + stdout.split(' ')[0]).toBe(config.modelfs.diffIds[i])
    }
    for (const p of ['model.safetensors', 'config.json', 'sub/README.md']) {
      const r = await cli.run(['cat', ref, p])
      expectOk(r)
      expect(sha256(r.stdout), p).toBe(sha256(await readFile(join(dir, p))))
    }
  }, 120_000)
})
