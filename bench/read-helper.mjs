#!/usr/bin/env node
// Helpers for bench/read (plain JS, no build step).
//   ttfb FILE                      ms from open() to the first byte read (1 byte at offset 0)
//   random FILE COUNT SEED [SIZE]  COUNT reads of SIZE (4096) bytes at random 4 KiB-aligned offsets, one at a
//                                  time; prints JSON {n,p50,p90,p99,mean,min,max} in ms
//   pct FILE                       FILE holds one number (ms) a line; prints JSON percentiles of them
//   offsets COUNT SEED MAX         COUNT random 4 KiB-aligned offsets below MAX, one a line
//   cpu PID                        utime+stime of PID in ms (from /proc/PID/stat)
import { open, readFile } from 'node:fs/promises'
import { rng } from './seeded-random.mjs'

const [cmd, ...rest] = process.argv.slice(2)

function stats(ms) {
  const s = [...ms].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]
  const r = (x) => Math.round(x * 1000) / 1000
  return { n: s.length, p50: r(q(50)), p90: r(q(90)), p99: r(q(99)), mean: r(s.reduce((a, b) => a + b, 0) / s.length), min: r(s[0]), max: r(s[s.length - 1]) }
}


function offsets(count, seed, max, size = 4096) {
  const next = rng(seed)
  const pages = Math.floor((max - size) / 4096)
  return Array.from({ length: count }, () => Math.floor(next() * pages) * 4096)
}

switch (cmd) {
  case 'ttfb': {
    const t0 = performance.now()
    const fh = await open(rest[0], 'r')
    const { bytesRead } = await fh.read(Buffer.alloc(1), 0, 1, 0)
    const ms = performance.now() - t0
    await fh.close()
    if (bytesRead !== 1) throw new Error('no byte read')
    console.log(ms.toFixed(2))
    break
  }
  case 'random': {
    const [file, count, seed, sizeArg] = rest
    const size = Number(sizeArg ?? 4096)
    const fh = await open(file, 'r')
    const { size: fileSize } = await fh.stat()
    const buf = Buffer.alloc(size)
    const times = []
    for (const off of offsets(Number(count), Number(seed), fileSize, size)) {
      const t0 = performance.now()
      const { bytesRead } = await fh.read(buf, 0, size, off)
      times.push(performance.now() - t0)
      if (bytesRead !== size) throw new Error(`short read at ${off}: ${bytesRead}`)
    }
    await fh.close()
    console.log(JSON.stringify(stats(times)))
    break
  }
  case 'pct': {
    const ms = (await readFile(rest[0], 'utf8')).split('\n').filter(Boolean).map(Number)
    console.log(JSON.stringify(stats(ms)))
    break
  }
  case 'offsets': {
    console.log(offsets(Number(rest[0]), Number(rest[1]), Number(rest[2])).join('\n'))
    break
  }
  case 'cpu': {
    const stat = await readFile(`/proc/${rest[0]}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // fields[11] = utime, fields[12] = stime (clock ticks; 100 Hz on Linux)
    console.log((Number(fields[11]) + Number(fields[12])) * 10)
    break
  }
  default:
    console.error('usage: read-helper.mjs ttfb|random|pct|offsets|cpu ...')
    process.exit(2)
}
