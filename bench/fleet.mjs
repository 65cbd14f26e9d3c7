#!/usr/bin/env node
/**
 * Fleet benchmark (issue 10): N cnaifs daemons on this machine ("nodes") each cold-read the same model at once
 * through ONE pull-through cache (docker-registry with `proxy: remoteurl:`), configured the way nodes are: a
 * containerd hosts.toml naming the cache as the mirror of the upstream registry. It counts the blob bytes the
 * upstream registry served (through the test suite's counting proxy), checks every file every node read against
 * its sha256, and compares the wall time with one node alone (its own cold pull-through cache). A third phase has
 * one node read the model first (warming a fresh cache) and then the other N-1 at once: the roll-out docs/mirrors.md
 * recommends, since a cache that has not stored a blob yet streams it from the upstream once per request.
 *
 *   npm run build && node bench/fleet.mjs [--nodes 8] [--size-mib 512] [--files 4] [--format raw|tar] [--reader mount|cat]
 *
 * --reader mount (default): each node is a daemon (`cnaifs mount`) and its files are read through FUSE. --reader cat:
 * each node runs `cnaifs cat` per file (one ranged GET for a whole raw file), which shows what the cache does when
 * its clients read whole blobs, apart from the daemon's read path.
 *
 * Needs root (FUSE mounts) and docker-registry. Prints a Markdown table to stdout, progress to stderr, and exits
 * non-zero if a file was wrong or the upstream served more than 2x the model (+1%) in any phase. Nothing is left
 * behind. FLEET_VERBOSE=1 lists every upstream blob GET.
 */
import { spawn } from 'node:child_process'
import { createCipheriv, createHash } from 'node:crypto'
import { createReadStream, createWriteStream, existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { loadTestHelpers } from './test-helpers.mjs'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const CLI = join(ROOT, 'bin', 'cnaifs')
const { values: args } = parseArgs({
  options: {
    nodes: { type: 'string', default: '8' },
    'size-mib': { type: 'string', default: '512' },
    files: { type: 'string', default: '4' },
    format: { type: 'string', default: 'raw' },
    reader: { type: 'string', default: 'mount' },
  },
})
const NODES = Number(args.nodes)
const SIZE = Math.round(Number(args['size-mib']) * 1024 * 1024)
const FILES = Number(args.files)
const FORMAT = args.format
const READER = args.reader
if (!(NODES >= 1 && SIZE > 0 && FILES >= 1) || !['raw', 'tar'].includes(FORMAT) || !['mount', 'cat'].includes(READER)) {
  throw new Error('--nodes, --size-mib, --files must be positive; --format raw or tar; --reader mount or cat')
}
const log = (msg) => process.stderr.write(`[fleet] ${msg}\n`)
if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js'))) { log('dist/ is missing: run `npm run build` first'); process.exit(1) }

function run(argv, { timeoutMs = 600_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.stdout.on('data', (c) => (stdout += c))
    child.stderr.on('data', (c) => (stderr += c))
    child.once('error', reject)
    child.once('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }) })
  })
}

function runToFile(argv, file) {
  return new Promise((resolve, reject) => {
    const out = createWriteStream(file)
    const child = spawn(process.execPath, [CLI, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stderr = ''
    child.stdout.pipe(out)
    child.stderr.on('data', (c) => (stderr += c))
    child.once('error', reject)
    child.once('close', (code) => out.end(() => resolve({ code, stderr })))
  })
}

async function sha256File(path) {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) h.update(chunk)
  return h.digest('hex')
}

async function makeModel(dir) {
  const files = {}
  const each = Math.floor(SIZE / FILES)
  for (let i = 0; i < FILES; i++) {
    const name = `model-${String(i + 1).padStart(5, '0')}-of-${String(FILES).padStart(5, '0')}.safetensors`
    const size = i === FILES - 1 ? SIZE - each * (FILES - 1) : each
    const key = createHash('sha256').update(`fleet-${i}`).digest().subarray(0, 16)
    const c = createCipheriv('aes-128-ctr', key, Buffer.alloc(16))
    const data = Buffer.concat([c.update(Buffer.alloc(size)), c.final()])
    await writeFile(join(dir, name), data)
    files[name] = createHash('sha256').update(data).digest('hex')
  }
  await writeFile(join(dir, 'config.json'), '{"architectures":["Fleet"]}\n')
  files['config.json'] = createHash('sha256').update('{"architectures":["Fleet"]}\n').digest('hex')
  return files
}

/** N nodes mount REF through the mirror at once and read every file; returns wall time and wrong files. */
async function fleet(work, n, ref, hostsDir, files) {
  const nodes = await Promise.all(Array.from({ length: n }, async (_, i) => {
    const dir = await mkdtemp(join(work, `node-${i}-`))
    const mp = join(dir, 'mnt')
    await mkdir(mp)
    return { cacheDir: join(dir, 'cache'), mp }
  }))
  const began = performance.now()
  const wrong = []
  try {
    await Promise.all(nodes.map(async (node) => {
      if (READER === 'cat') {
        for (const [name, digest] of Object.entries(files)) {
          const out = join(node.mp, name)
          const c = await runToFile(['--cache-dir', node.cacheDir, 'cat', '--hosts-dir', hostsDir, ref, name], out)
          if (c.code !== 0) throw new Error(`cat failed (${c.code}): ${c.stderr.trim()}`)
          if ((await sha256File(out)) !== digest) wrong.push(`${node.mp}/${name}`)
          await rm(out)
        }
        return
      }
      const m = await run(['--cache-dir', node.cacheDir, 'mount', '--hosts-dir', hostsDir, ref, node.mp])
      if (m.code !== 0) throw new Error(`mount failed (${m.code}): ${m.stderr.trim()}`)
      node.mounted = true
      for (const [name, digest] of Object.entries(files)) {
        if ((await sha256File(join(node.mp, name))) !== digest) wrong.push(`${node.mp}/${name}`)
      }
    }))
    return { ms: performance.now() - began, wrong }
  } finally {
    await Promise.all(nodes.map(async (node) => {
      if (node.mounted) await run(['--cache-dir', node.cacheDir, 'unmount', node.mp], { timeoutMs: 30_000 }).catch(() => undefined)
    }))
  }
}

const work = await mkdtemp(join(tmpdir(), 'cnaifs-fleet-'))
const stops = []
let failed = false
try {
  const { startRegistry, startProxy } = await loadTestHelpers(work)
  const upstream = await startRegistry(); stops.push(() => upstream.stop())
  const counting = await startProxy(upstream.url); stops.push(() => counting.stop())
  const modelDir = join(work, 'model'); await mkdir(modelDir)
  log(`making a ${(SIZE / 1048576).toFixed(0)} MiB model of ${FILES} files`)
  const files = await makeModel(modelDir)
  const ref = `${upstream.host}/fleet/model:v1`
  const push = await run(['push', modelDir, ref, '--format', FORMAT, '--no-progress'])
  if (push.code !== 0) throw new Error(`push failed: ${push.stderr}`)

  const rows = []
  // Phases: one node alone; the whole fleet at once; one node first (warming the cache), then the rest at once.
  const phases = [{ n: 1, label: '1' }, { n: NODES, label: String(NODES) }]
  if (NODES > 1) phases.push({ n: NODES, warm: true, label: `1, then ${NODES - 1}` })
  for (const { n, warm, label } of phases) {
    // A fresh, cold pull-through cache for each phase, so one node alone does not warm it for the fleet.
    const cache = await startRegistry({ proxyRemoteUrl: counting.url }); stops.push(() => cache.stop())
    const hostsDir = join(work, `certs.d-${n}`)
    const hostDir = join(hostsDir, upstream.host.replace(/:(\d+)$/, '_$1_'))
    await mkdir(hostDir, { recursive: true })
    await writeFile(join(hostDir, 'hosts.toml'), `server = "http://${upstream.host}"\n[host."http://${cache.host}"]\n  capabilities = ["pull", "resolve"]\n`)
    counting.reset()
    log(warm ? `1 node warming a cold pull-through cache, then ${n - 1} reading through it at once` : `${n} node(s) reading through a cold pull-through cache`)
    let { ms, wrong } = await fleet(work, warm ? 1 : n, ref, hostsDir, files)
    if (warm) {
      const rest = await fleet(work, n - 1, ref, hostsDir, files)
      ms += rest.ms
      wrong = [...wrong, ...rest.wrong]
    }
    const upstreamBytes = counting.blobBytes()
    const upstreamGets = counting.blobRequests()
    log(`upstream blob GETs: ${upstreamGets.length}, ${upstreamGets.filter((e) => e.bytes >= Math.floor(SIZE / FILES)).length} of them whole blobs`)
    if (process.env.FLEET_VERBOSE) for (const e of upstreamGets) log(`  ${e.path.slice(-20)} ${e.range ?? '-'} ${e.status} ${e.bytes}`)
    const ratio = upstreamBytes / SIZE
    if (wrong.length) { failed = true; log(`wrong files: ${wrong.join(', ')}`) }
    // 2x is distribution 2.8's own floor for one cold reader (it fetches the blob once to store it and once for the
    // client); 1% on top is the config blob and what cancelled read-ahead requests had in flight.
    if (ratio > 2.02) { failed = true; log(`upstream served ${ratio.toFixed(2)}x the model: more than 2x`) }
    rows.push({ n, label, ms, upstreamBytes, ratio, wrong: wrong.length })
    await cache.stop()
  }
  const one = rows[0].ms
  console.log(`reader: ${READER}\n`)
  console.log(`| nodes | model | wall time | vs one node | upstream blob bytes | x model | wrong files |`)
  console.log(`|---|---|---|---|---|---|---|`)
  for (const r of rows) {
    console.log(`| ${r.label} | ${(SIZE / 1048576).toFixed(0)} MiB ${FORMAT} | ${(r.ms / 1000).toFixed(1)} s | ${(r.ms / one).toFixed(2)}x | ${r.upstreamBytes} | ${r.ratio.toFixed(2)} | ${r.wrong} |`)
  }
  console.log(`\nload average at the end: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`)
} catch (err) {
  failed = true
  log(`failed: ${err.stack ?? err}`)
} finally {
  for (const stop of stops.reverse()) await stop().catch(() => undefined)
  await rm(work, { recursive: true, force: true })
}
process.exit(failed ? 1 : 0)
