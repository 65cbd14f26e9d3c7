#!/usr/bin/env node
/**
 * Index-building benchmark: how many blob requests, how many bytes and how much time `cnaifs ls -R` needs
 * for a many-file model, cold (no persisted index) and warm (second run, same --cache-dir).
 *
 * It starts a private docker-registry and the fault proxy of the test suite (test/helpers/*.ts, transpiled
 * on the fly with the project's own TypeScript, so the counting is the same code the tests use), pushes a
 * model of --files files with `cnaifs push --format raw` and `--format tar` straight to the registry, then
 * runs the real CLI (`node bin/cnaifs ls -R`) through the proxy and reads its counters.
 *
 *   npm run build && node bench/index-requests.mjs [--files 1000] [--file-size 4096] [--runs 3]
 *
 * Prints a Markdown table (median of --runs runs per row) to stdout; progress goes to stderr.
 */
import { spawn } from 'node:child_process'
import { createCipheriv, createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { loadTestHelpers } from './test-helpers.mjs'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const CLI = join(ROOT, 'bin', 'cnaifs')

const { values: args } = parseArgs({
  options: {
    files: { type: 'string', default: '1000' },
    'file-size': { type: 'string', default: '4096' },
    runs: { type: 'string', default: '3' },
  },
})
const FILES = Number(args.files)
const FILE_SIZE = Number(args['file-size'])
const RUNS = Number(args.runs)
if (!(FILES > 0 && FILE_SIZE >= 0 && RUNS > 0)) throw new Error('--files, --file-size and --runs must be positive numbers')

const log = (msg) => process.stderr.write(`[bench] ${msg}\n`)

if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js'))) {
  process.stderr.write('dist/ is missing: run `npm run build` first\n')
  process.exit(1)
}

function seeded(size, seed) {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16)
  const c = createCipheriv('aes-128-ctr', key, Buffer.alloc(16))
  return Buffer.concat([c.update(Buffer.alloc(size)), c.final()])
}

/** FILES files spread over nested directories, sized around FILE_SIZE. */
async function makeModel(dir) {
  let bytes = 0
  for (let i = 0; i < FILES; i++) {
    const path = join(dir, `group-${String(i % 20).padStart(2, '0')}`, `sub-${i % 3}`, `file-${String(i).padStart(5, '0')}.bin`)
    await mkdir(dirname(path), { recursive: true })
    const size = FILE_SIZE + (i % 7) * 100
    await writeFile(path, seeded(size, `bench-${i}`))
    bytes += size
  }
  return bytes
}

function run(argv) {
  return new Promise((resolve, reject) => {
    const began = performance.now()
    const child = spawn(process.execPath, [CLI, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c) => (stdout += c))
    child.stderr.on('data', (c) => (stderr += c))
    child.once('error', reject)
    child.once('close', (code) => {
      const ms = performance.now() - began
      if (code !== 0) reject(new Error(`cnaifs ${argv.join(' ')} exited ${code}: ${stderr.trim()}`))
      else resolve({ stdout, ms })
    })
  })
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

async function main() {
  const work = await mkdtemp(join(tmpdir(), 'cnaifs-bench-'))
  const { startRegistry, startProxy } = await loadTestHelpers(work)
  const registry = await startRegistry()
  const proxy = await startProxy(registry.url)
  const rows = []
  try {
    const modelDir = join(work, 'model')
    const bytes = await makeModel(modelDir)
    log(`model: ${FILES} files, ${bytes} bytes; registry ${registry.host}, proxy ${proxy.host}`)
    for (const format of ['raw', 'tar']) {
      const repo = `bench/index-${format}`
      let t0 = performance.now()
      await run(['--cache-dir', join(work, `push-cache-${format}`), 'push', modelDir, `${registry.host}/${repo}:v1`, '--format', format, '--no-progress'])
      log(`pushed --format ${format} in ${Math.round(performance.now() - t0)} ms`)
      const samples = { cold: [], warm: [] }
      for (let r = 0; r < RUNS; r++) {
        const cacheDir = join(work, `cache-${format}-${r}`)
        for (const phase of ['cold', 'warm']) {
          proxy.reset()
          const { stdout, ms } = await run(['--cache-dir', cacheDir, 'ls', '-R', `${proxy.host}/${repo}:v1`])
          const listed = stdout.split('\n').filter((l) => l.endsWith('.bin')).length
          if (listed !== FILES) throw new Error(`ls -R listed ${listed} files, expected ${FILES}`)
          const blob = proxy.blobRequests()
          samples[phase].push({
            ms,
            blobRequests: blob.length,
            ranged: blob.filter((e) => e.range).length,
            blobBytes: proxy.blobBytes(),
            requests: proxy.log.length,
          })
        }
      }
      for (const phase of ['cold', 'warm']) {
        const s = samples[phase]
        const row = {
          format,
          phase,
          requests: median(s.map((x) => x.requests)),
          blobRequests: median(s.map((x) => x.blobRequests)),
          ranged: median(s.map((x) => x.ranged)),
          blobBytes: median(s.map((x) => x.blobBytes)),
          ms: median(s.map((x) => x.ms)),
        }
        rows.push(row)
        log(`${format} ${phase}: ${JSON.stringify(row)}`)
      }
    }
  } finally {
    await proxy.stop()
    await registry.stop()
    await rm(work, { recursive: true, force: true })
  }

  const out = [
    `Model: ${FILES} files of ~${FILE_SIZE} bytes, one layer per file; median of ${RUNS} runs; node ${process.version}.`,
    '',
    '| layers | run | HTTP requests | blob GETs (ranged) | blob bytes | wall time |',
    '|---|---|---:|---:|---:|---:|',
    ...rows.map((r) => `| ${r.format} | ${r.phase} | ${r.requests} | ${r.blobRequests} (${r.ranged}) | ${r.blobBytes} | ${Math.round(r.ms)} ms |`),
  ]
  process.stdout.write(out.join('\n') + '\n')
}

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`)
  process.exit(1)
})
