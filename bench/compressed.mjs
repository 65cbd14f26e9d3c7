/**
 * bench/compressed — tar+gzip and tar+zstd layers (issue 4). Run as root from a built checkout:
 *
 *   npx tsc -p tsconfig.json && bench/compressed
 *
 * Makes one SIZE_MIB weight file of bf16-like values (random mantissas, exponents of small weights: gzip -6
 * shrinks it to ~80%), tars it with GNU tar, and pushes three single-layer ModelPack artifacts to a private
 * local registry (scripts/local-registry) with hand-made manifests:
 *   tar       the plain tar (the baseline)
 *   tar+gzip  `gzip -6` of the tar (GNU gzip: one member)
 *   tar+zstd  the tar as `cnaifs push --format tar+zstd` writes it (4 MiB frames + seek table, zstd -3)
 * Then, per compressed layer:
 *   - index build: `cnaifs ls` with a fresh cache dir (the one pass: fetch, decompress, tar listing, diffId)
 *     against `curl -s BLOB | gunzip > /dev/null` (or `zstd -dc`) of the same blob;
 *   - RANDOM_READS random 4 KiB reads through a fresh `cnaifs mount` (index cached, block cache empty: every
 *     read is a cold 1 MiB block), p50/p99, and the same reads of the plain tar layer's mount;
 *   - compressed bytes fetched per random read (the daemon's cnaifs_registry_fetched_bytes_total).
 * Prints a Markdown table. Everything it starts is stopped and its temp dir removed, even on failure.
 *
 * Environment: SIZE_MIB=1024, RANDOM_READS=200, WORK_BASE=/var/tmp (needs ~4.5 × SIZE_MIB free), KEEP=1.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { createHash, createCipheriv } from 'node:crypto'
import { createReadStream, createWriteStream, existsSync, mkdirSync, mkdtempSync, openSync, readSync, closeSync, rmSync, statSync } from 'node:fs'
import { once } from 'node:events'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const CLI = join(ROOT, 'bin', 'cnaifs')
const SIZE_MIB = Number(process.env.SIZE_MIB ?? 1024)
const RANDOM_READS = Number(process.env.RANDOM_READS ?? 200)
const WORK_BASE = process.env.WORK_BASE ?? '/var/tmp'
const MiB = 1024 * 1024

const say = (m) => process.stderr.write(`[bench/compressed ${new Date().toISOString().slice(11, 19)}] ${m}\n`)
if (process.getuid?.() !== 0) { say('run as root (FUSE mounts)'); process.exit(1) }
if (!existsSync(join(ROOT, 'dist/cli/main.js'))) { say('not built: run npx tsc -p tsconfig.json'); process.exit(1) }

const { RegistryClient } = await import(join(ROOT, 'dist/registry/client.js'))
const { FileCredentialStore } = await import(join(ROOT, 'dist/registry/credentials.js'))
const { parseReference } = await import(join(ROOT, 'dist/registry/reference.js'))
const { compressLayer } = await import(join(ROOT, 'dist/pack/compress.js'))

const WORK = mkdtempSync(join(WORK_BASE, 'cnaifs-bench-compressed.'))
const mounts = []
let registryPid

function cleanup() {
  for (const m of mounts) spawnSync('fusermount', ['-uz', m.mp])
  for (const m of mounts) try { process.kill(m.pid, 'SIGKILL') } catch {}
  if (registryPid) try { process.kill(registryPid) } catch {}
  if (!process.env.KEEP) rmSync(WORK, { recursive: true, force: true })
}
process.on('exit', cleanup)
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => process.exit(130))

function sh(script, opts = {}) {
  return execFileSync('bash', ['-euo', 'pipefail', '-c', script], { cwd: WORK, encoding: 'utf8', maxBuffer: 64 * MiB, ...opts })
}
function timed(fn) {
  const t = performance.now()
  const r = fn()
  return { ms: performance.now() - t, r }
}
async function timedAsync(fn) {
  const t = performance.now()
  const r = await fn()
  return { ms: performance.now() - t, r }
}
function cli(args, opts = {}) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', maxBuffer: 64 * MiB, ...opts })
  if (r.status !== 0) throw new Error(`cnaifs ${args.join(' ')}: exit ${r.status}: ${r.stderr}`)
  return r
}
async function freePort() {
  const s = createServer().listen(0, '127.0.0.1')
  await once(s, 'listening')
  const port = s.address().port
  s.close()
  return port
}
function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]
}
const fmt = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(1)} ms`)

// ---------------------------------------------------------------------------------------------------------
say(`work dir ${WORK}`)
const port = await freePort()
registryPid = Number(sh(`${ROOT}/scripts/local-registry ${port} ${WORK}/registry`).trim())
const host = `127.0.0.1:${port}`

say(`writing a ${SIZE_MIB} MiB bf16-like weight file and its tar`)
mkdirSync(join(WORK, 'src/model'), { recursive: true })
{
  const out = createWriteStream(join(WORK, 'src/model/weights.bin'))
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16))
  for (let i = 0; i < SIZE_MIB; i++) {
    const b = cipher.update(Buffer.alloc(MiB))
    for (let j = 1; j < b.length; j += 2) b[j] = (b[j] & 0x80) | (0x3a + (b[j] & 3)) // sign + a small exponent
    if (!out.write(b)) await once(out, 'drain')
  }
  out.end()
  await once(out, 'finish')
}
sh('tar --format=pax --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -C src -cf t.tar model && rm -r src')
say('gzip -6 (GNU gzip) and the cnaifs zstd packer')
const gzipMs = timed(() => sh('gzip -6 -c t.tar > t.gz')).ms
const zstdPackMs = (await timedAsync(() => compressLayer(createReadStream(join(WORK, 't.tar')), 'zstd', join(WORK, 't.zst')))).ms

async function digestOf(path) {
  const h = createHash('sha256')
  for await (const c of createReadStream(path)) h.update(c)
  return 'sha256:' + h.digest('hex')
}

const client = new RegistryClient({ credentials: new FileCredentialStore({ files: [], env: {} }), plainHttp: true })
async function push(name, file, form) {
  const ref = parseReference(`${host}/bench/${name}:v1`)
  const digest = await digestOf(join(WORK, file))
  const size = statSync(join(WORK, file)).size
  await client.pushBlob(ref, digest, size, () => createReadStream(join(WORK, file), { highWaterMark: MiB }))
  const config = Buffer.from(JSON.stringify({ descriptor: { name }, config: {}, modelfs: { type: 'layers', diffIds: [] } }))
  const configDigest = 'sha256:' + createHash('sha256').update(config).digest('hex')
  await client.pushBlob(ref, configDigest, config.length, config)
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', artifactType: 'application/vnd.cncf.model.manifest.v1+json',
    config: { mediaType: 'application/vnd.cncf.model.config.v1+json', digest: configDigest, size: config.length },
    layers: [{ mediaType: `application/vnd.cncf.model.weight.v1.${form}`, digest, size }],
  }))
  const md = await client.putManifest(ref, 'v1', manifest, 'application/vnd.oci.image.manifest.v1+json')
  return { ref: `${host}/bench/${name}@${md}`, blobUrl: `http://${host}/v2/bench/${name}/blobs/${digest}`, size }
}
say('pushing')
const layers = {
  tar: await push('tar', 't.tar', 'tar'),
  'tar+gzip': await push('gzip', 't.gz', 'tar+gzip'),
  'tar+zstd': await push('zstd', 't.zst', 'tar+zstd'),
}
await client.close()

// Distinct 1 MiB blocks of the weight file (never the first or last), the same for every layer.
const fileSize = SIZE_MIB * MiB
const blocks = []
{
  const seen = new Set()
  const r = createHash('sha256').update('offsets').digest()
  let x = r.readUInt32LE(0)
  while (blocks.length < Math.min(RANDOM_READS, SIZE_MIB - 2)) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    const b = 1 + (x % (SIZE_MIB - 2))
    if (!seen.has(b)) { seen.add(b); blocks.push(b) }
  }
}

/** Mounts each layer (index cached, block cache empty), then reads the blocks in turn across the mounts, so
 * load from other work on the machine falls on every layer alike. */
async function readAll(targets) {
  const live = []
  for (const t of targets) {
    const mp = join(WORK, `mnt-${t.label.replace(/\W/g, '')}`)
    cli(['--cache-dir', t.cache, 'mount', t.ref, mp, '--memory-budget', '256M'])
    const status = JSON.parse(cli(['--cache-dir', t.cache, 'status', mp, '--json']).stdout)
    mounts.push({ mp, pid: status.pid })
    live.push({ ...t, mp, before: status.metrics, fd: openSync(join(mp, 'model/weights.bin'), 'r'), lat: [] })
  }
  const buf = Buffer.alloc(4096)
  for (const b of blocks) {
    const offset = b * MiB + 4096 * ((b * 37) % 200)
    for (const l of live) {
      const t = performance.now()
      readSync(l.fd, buf, 0, 4096, offset)
      l.lat.push(performance.now() - t)
    }
  }
  const out = {}
  for (const l of live) {
    closeSync(l.fd)
    const after = JSON.parse(cli(['--cache-dir', l.cache, 'status', l.mp, '--json']).stdout).metrics
    const key = Object.keys(after).find((k) => k.startsWith('cnaifs_registry_fetched_bytes_total'))
    cli(['--cache-dir', l.cache, 'unmount', l.mp])
    mounts.splice(mounts.findIndex((x) => x.mp === l.mp), 1)
    out[l.label] = { p50: pct(l.lat, 50), p99: pct(l.lat, 99), fetchedPerRead: key ? (after[key] - (l.before[key] ?? 0)) / blocks.length : NaN }
  }
  return out
}

const rows = []
const targets = []
say('plain tar: index')
{
  const cache = mkdtempSync(join(WORK, 'cache-'))
  const idx = timed(() => cli(['--cache-dir', cache, 'ls', layers.tar.ref])).ms
  rows.push({ layer: 'tar', size: layers.tar.size, idx, pipe: NaN })
  targets.push({ label: 'tar', ref: layers.tar.ref, cache })
}
for (const form of ['tar+gzip', 'tar+zstd']) {
  const l = layers[form]
  say(`${form}: curl | ${form === 'tar+gzip' ? 'gunzip' : 'zstd -dc'}`)
  const pipe = timed(() => sh(`curl -sf ${l.blobUrl} | ${form === 'tar+gzip' ? 'gunzip -c' : 'zstd -dcq'} > /dev/null`)).ms
  say(`${form}: index build (cnaifs ls, fresh cache)`)
  const cache = mkdtempSync(join(WORK, 'cache-'))
  const ls = timed(() => cli(['--cache-dir', cache, '--log-level', 'info', 'ls', l.ref]))
  const line = ls.r.stderr.split('\n').find((x) => x.includes('compressed-index'))
  const info = line ? JSON.parse(line) : {}
  rows.push({ layer: form, size: l.size, idx: ls.ms, pipe, checkpoints: info.checkpoints, slice: info.longestSliceMs })
  targets.push({ label: form, ref: l.ref, cache })
}
say(`random 4 KiB reads through fresh mounts, ${blocks.length} per layer, interleaved`)
const reads = await readAll(targets)
for (const r of rows) Object.assign(r, reads[r.layer])
const load = sh('cut -d" " -f1-3 /proc/loadavg').trim()

const base = rows[0]
const out = [
  `${SIZE_MIB} MiB weight file (bf16-like), one tar layer; gzip -6 took ${fmt(gzipMs)}, the zstd packer ${fmt(zstdPackMs)}; ${blocks.length} random 4 KiB reads per layer, each in a distinct cold 1 MiB block, interleaved across the three mounts; load average at the end: ${load}.`,
  '',
  '| layer | blob size | index build (`cnaifs ls`, cold) | `curl \\| decompress` | checkpoints | longest sync slice | 4 KiB read p50 | p99 | p50 / tar | registry bytes per read |',
  '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ...rows.map((r) => `| ${r.layer === 'tar' ? 'tar (baseline)' : r.layer} | ${(r.size / MiB).toFixed(0)} MiB | ${fmt(r.idx)} | ${Number.isNaN(r.pipe) ? '–' : fmt(r.pipe)} | ${r.checkpoints ?? '–'} | ${r.slice !== undefined ? `${r.slice} ms` : '–'} | ${fmt(r.p50)} | ${fmt(r.p99)} | ${(r.p50 / base.p50).toFixed(1)}× | ${(r.fetchedPerRead / MiB).toFixed(2)} MiB |`),
]
process.stdout.write(out.join('\n') + '\n')
