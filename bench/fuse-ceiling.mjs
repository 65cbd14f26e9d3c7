#!/usr/bin/env node
// The ceiling of each FUSE binding, both in one run: a one-file filesystem served through the binding
// (src/fuse: fuse3 = our libfuse 3 addon, fuse-native = libfuse 2), read with `dd bs=1M`.
//   (a) memory:  every read answered with a Buffer of constant bytes (no cache, no network)
//   (b) file:    every read answered with a FileRange of a local file that is in the page cache
// Before each dd the page cache is dropped (echo 3 > /proc/sys/vm/drop_caches, so the FUSE file is cold);
// for (b) the source file is read back into the page cache after the drop. Prints a Markdown table with MB/s
// and the fuse3 / fuse-native ratio, plus `uptime`.
//
// Usage (root; build first: npx tsc -p tsconfig.json):
//   node bench/fuse-ceiling.mjs [--size-mib 2048] [--runs 1] [--readahead-kb 16384] [--max-background 64]
//                               [--splice 0|1] [--bindings fuse3,fuse-native] [--dir /var/tmp]
// Serve mode (bench/read uses it): node bench/fuse-ceiling.mjs MOUNTPOINT [SIZE_MIB=2048] mounts MOUNTPOINT/zero.bin
//   (memory replies) through the binding cnaifs would pick (CNAIFS_FUSE forces one), prints "ready" once
//   mounted, and unmounts on SIGTERM.
import { execFile } from 'node:child_process'
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { promisify } from 'node:util'

const run = promisify(execFile)
const REPO = join(fileURLToPath(import.meta.url), '..', '..')
const MIB = 1024 * 1024

const argv = process.argv.slice(2)
const serveMountpoint = argv[0] && !argv[0].startsWith('--') ? argv[0] : undefined
const opt = (name, def) => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : def }
const sizeMib = Number(serveMountpoint ? (argv[1] ?? 2048) : opt('--size-mib', 2048))
const runs = Number(opt('--runs', 1))
const readaheadKb = Number(opt('--readahead-kb', 16384))
const maxBackground = Number(opt('--max-background', 64))
const splice = opt('--splice', undefined) // default: the binding's (CNAIFS_FUSE_SPLICE unset = copy)
const bindings = opt('--bindings', 'fuse3,fuse-native').split(',')
const baseDir = opt('--dir', tmpdir())
const size = sizeMib * MIB

if (!serveMountpoint && process.getuid() !== 0) {
  console.error('fuse-ceiling: run as root (it drops the page cache and tunes the mounts through sysfs)')
  process.exit(2)
}
// Read by fuse3-binding.ts when it loads.
if (splice !== undefined) process.env.CNAIFS_FUSE_SPLICE = splice

const { loadBinding } = await import(pathToFileURL(join(REPO, 'dist', 'fuse', 'select-binding.js')).href)
const { FuseErrno } = await import(pathToFileURL(join(REPO, 'dist', 'fuse', 'binding.js')).href)

/** Serve mode: one file, zero.bin, answered from memory, until SIGTERM. */
async function serve(mountpoint) {
  const { binding, reason } = await loadBinding()
  const memory = Buffer.alloc(MIB, 7)
  const stats = { requests: 0, bytes: 0, maxRequest: 0 }
  const ops = oneFileOps((_offset, length) => memory.subarray(0, length), stats, 'zero.bin')
  await run('mkdir', ['-p', mountpoint])
  const session = await binding.mount(mountpoint, ops, {
    fsname: 'cnaifs:ceiling', subtype: 'cnaifs', allowOther: false, attrTimeoutS: 3600, entryTimeoutS: 3600, negativeTimeoutS: 3600,
    readaheadBytes: readaheadKb * 1024, maxBackground, congestionThreshold: Math.floor(maxBackground * 3 / 4),
  })
  console.log('ready')
  const stop = () => session.unmount().then(() => {
    console.error(`${session.binding} (${reason}): ${stats.requests} reads, largest ${stats.maxRequest / 1024} KiB`)
    process.exit(0)
  })
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  await new Promise(() => {})
}

/** A one-file filesystem: /<name>, answered by `answer(offset, length)`. */
function oneFileOps(answer, stats, name = 'data') {
  const now = Date.now()
  const attr = (ino, mode, sz) => ({ ino, mode, nlink: 1, uid: 0, gid: 0, size: sz, blocks: Math.ceil(sz / 512), blksize: MIB, atimeMs: now, mtimeMs: now, ctimeMs: now })
  const root = attr(1, 0o040755, 4096)
  const file = attr(2, 0o100444, size)
  return {
    lookup(parent, child) { if (parent === 1 && child === name) return file; throw new FuseErrno(2) },
    getattr(ino) { return ino === 1 ? root : file },
    readlink() { throw new FuseErrno(22) },
    open() { return 1 },
    read(_ino, _fh, offset, length) {
      stats.requests++
      stats.bytes += length
      if (length > stats.maxRequest) stats.maxRequest = length
      return answer(offset, Math.max(0, Math.min(length, size - offset)))
    },
    release() {},
    opendir() { return 1 },
    readdir() { return [{ name: '.', attr: root }, { name: '..', attr: root }, { name, attr: file }] },
    releasedir() {},
    getxattr() { throw new FuseErrno(61) },
    listxattr() { return [] },
    statfs() { return { bsize: 4096, frsize: 4096, blocks: size / 4096, bfree: 0, bavail: 0, files: 2, ffree: 0, favail: 0, namemax: 255 } },
    access() {},
  }
}

/** CPU time (ms) of this process's main thread, the JavaScript thread: utime + stime of its task. */
async function jsThreadCpuMs() {
  const stat = await readFile(`/proc/self/task/${process.pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) * 1000 / CLOCK_TICKS
}
const CLOCK_TICKS = 100 // sysconf(_SC_CLK_TCK) on Linux

async function dropCaches() {
  await run('sync')
  await writeFile('/proc/sys/vm/drop_caches', '3\n')
}

/** dd of `file` with bs=1M; MB/s (10^6 bytes per second) from dd's own byte count and time. */
async function dd(file) {
  const { stderr } = await run('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M'], { maxBuffer: MIB })
  const m = /(\d+) bytes .* copied, ([\d.]+) s/.exec(stderr)
  if (!m) throw new Error(`cannot parse dd output: ${stderr}`)
  if (Number(m[1]) !== size) throw new Error(`dd read ${m[1]} bytes, expected ${size}`)
  return Number(m[1]) / Number(m[2]) / 1e6
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

async function main() {
  // The source for (b), written once; constant bytes like (a), so both move the same data.
  const chunk = Buffer.alloc(MIB, 7)
  const fh = await open(source, 'w')
  for (let off = 0; off < size; off += MIB) await fh.write(chunk, 0, Math.min(MIB, size - off), off)
  await fh.close()
  const src = await open(source, 'r')
  const memory = Buffer.alloc(MIB, 7)

  const results = {}
  const details = []
  const local = []
  for (let r = 0; r < runs; r++) { await dropCaches(); await run('cat', [source]).catch(() => {}); local.push(await dd(source)) }
  for (const name of bindings) {
    const { binding, reason } = await loadBinding({ CNAIFS_FUSE: name })
    for (const kind of ['memory', 'file']) {
      const stats = { requests: 0, bytes: 0, maxRequest: 0 }
      const answer = kind === 'memory'
        ? (_offset, length) => memory.subarray(0, length)
        : (offset, length) => ({ fd: src.fd, position: offset, length })
      const mp = join(dir, `mnt-${name}-${kind}`)
      await run('mkdir', ['-p', mp])
      const session = await binding.mount(mp, oneFileOps(answer, stats), {
        fsname: `cnaifs:ceiling-${kind}`, subtype: 'cnaifs', allowOther: false,
        attrTimeoutS: 3600, entryTimeoutS: 3600, negativeTimeoutS: 3600,
        readaheadBytes: readaheadKb * 1024, maxBackground, congestionThreshold: Math.floor(maxBackground * 3 / 4),
      })
      const speeds = []
      const cpuPerGib = []
      const jsPerGib = []
      try {
        for (let r = 0; r < runs; r++) {
          await dropCaches()
          if (kind === 'file') await run('dd', [`if=${source}`, 'of=/dev/null', 'bs=1M'])
          // CPU time of this process (every thread: JavaScript, libfuse's workers, the reply pool) while dd
          // reads: what serving costs, much less sensitive to a busy machine than MB/s.
          const cpu = process.cpuUsage()
          const js = await jsThreadCpuMs()
          speeds.push(await dd(join(mp, 'data')))
          const used = process.cpuUsage(cpu)
          const gib = size / 1024 / MIB
          cpuPerGib.push((used.user + used.system) / 1000 / gib)
          jsPerGib.push(((await jsThreadCpuMs()) - js) / gib)
        }
      } finally {
        await session.unmount()
      }
      results[`${name}/${kind}`] = median(speeds)
      details.push(`${name} ${kind}: ${speeds.map((s) => s.toFixed(0)).join(', ')} MB/s; server CPU ${cpuPerGib.map((c) => c.toFixed(0)).join(', ')} ms/GiB (JavaScript thread ${jsPerGib.map((c) => c.toFixed(0)).join(', ')}); ${stats.requests} requests, largest ${stats.maxRequest / 1024} KiB, mean ${(stats.bytes / Math.max(1, stats.requests) / 1024).toFixed(0)} KiB (${reason})`)
    }
  }
  await src.close()

  const { stdout: uptime } = await run('uptime')
  const cell = (v) => (v === undefined ? '–' : v.toFixed(0))
  const ratio = (a, b) => (a === undefined || b === undefined ? '–' : `${(a / b).toFixed(2)}×`)
  console.log(`dd bs=1M of ${sizeMib} MiB, page cache dropped before each run; median of ${runs}; read_ahead_kb=${readaheadKb}, max_background=${maxBackground}, splice=${process.env.CNAIFS_FUSE_SPLICE === '1' ? 'on' : 'off'}`)
  console.log()
  console.log('| served from | fuse3 MB/s | fuse-native MB/s | fuse3 / fuse-native |')
  console.log('|---|---:|---:|---:|')
  for (const [kind, label] of [['memory', '(a) memory (Buffer replies)'], ['file', '(b) file in page cache (FileRange replies)']]) {
    const a = results[`fuse3/${kind}`]
    const b = results[`fuse-native/${kind}`]
    console.log(`| ${label} | ${cell(a)} | ${cell(b)} | ${ratio(a, b)} |`)
  }
  console.log(`| local file, dd of the source itself (reference) | ${cell(median(local))} | | |`)
  console.log()
  for (const d of details) console.log(`- ${d}`)
  console.log(`- uptime: ${uptime.trim()}`)
}

if (serveMountpoint) await serve(serveMountpoint) // never returns
const dir = await mkdtemp(join(baseDir, 'cnaifs-ceiling-'))
const source = join(dir, 'source.bin')
try {
  await main()
} finally {
  await rm(dir, { recursive: true, force: true })
}
