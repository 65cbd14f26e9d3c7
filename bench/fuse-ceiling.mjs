#!/usr/bin/env node
// The ceiling of the FUSE layer cnaifs uses (fuse-native 2.2.6 + libfuse 2, same mount options and the same
// post-mount tuning): a one-file filesystem whose reads answer at once from a preallocated buffer (no cache,
// no network). `cat` of its file measures what fuse-native + the kernel can move, independent of cnaifs.
//
// Usage: node bench/fuse-ceiling.mjs MOUNTPOINT [SIZE_MIB=2048] [--read-ahead-kb 16384] [--max-background 64] [--delay-ms 0]
//   Prints "ready" once mounted and tuned; SIGTERM unmounts and exits. The file is MOUNTPOINT/zero.bin.
import { createRequire } from 'node:module'
import { statfs } from 'node:fs/promises'
import { readFileSync, writeFileSync, existsSync, mkdirSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const require = createRequire(join(fileURLToPath(import.meta.url), '..', '..', 'package.json'))
const Fuse = require('fuse-native')

const argv = process.argv.slice(2)
const opt = (name, def) => { const i = argv.indexOf(name); return i >= 0 ? Number(argv[i + 1]) : def }
const positional = argv.filter((a, i) => !a.startsWith('--') && !(i > 0 && argv[i - 1].startsWith('--')))
const mnt = resolve(positional[0])
const size = Number(positional[1] ?? 2048) * 1024 * 1024
const readAheadKb = opt('--read-ahead-kb', 16384)
const maxBackground = opt('--max-background', 64)
const delayMs = opt('--delay-ms', 0) // answer each read after this long (setTimeout), to see how many reads the kernel keeps in flight
const data = Buffer.alloc(128 * 1024, 7)
mkdirSync(mnt, { recursive: true })

const now = new Date()
const stat = (mode, sz) => ({ mtime: now, atime: now, ctime: now, size: sz, mode, uid: 0, gid: 0, nlink: 1, blksize: 131072, blocks: Math.ceil(sz / 512), ino: mode & 0o040000 ? 1 : 2, dev: 0, rdev: 0 })
let reads = 0
let inFlight = 0
let maxInFlight = 0
const ops = {
  getattr: (p, cb) => p === '/' ? cb(0, stat(0o040755, 4096)) : p === '/zero.bin' ? cb(0, stat(0o100644, size)) : cb(Fuse.ENOENT),
  readdir: (p, cb) => p === '/' ? cb(0, ['zero.bin']) : cb(Fuse.ENOENT),
  open: (p, flags, cb) => cb(0, 42),
  release: (p, fd, cb) => cb(0),
  read: (p, fd, buf, len, pos, cb) => {
    reads++
    const answer = () => {
      const n = Math.max(0, Math.min(len, size - pos, data.length))
      data.copy(buf, 0, 0, n)
      cb(n)
    }
    if (!delayMs) return answer()
    if (++inFlight > maxInFlight) maxInFlight = inFlight
    setTimeout(() => { inFlight--; answer() }, delayMs)
  },
}
const fuse = new Fuse(mnt, ops, { force: true, mkdir: true, kernelCache: true, maxRead: 131072, attrTimeout: 3600, entryTimeout: 3600, timeout: false })
fuse.mount(async (err) => {
  if (err) { console.error(err); process.exit(1) }
  await statfs(mnt) // waits until FUSE_INIT is answered, else the INIT reply would undo the tuning
  // Same tuning as src/fuse/filesystem.ts tuneMount().
  const line = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mnt)
  const [major, minor] = line.split(' ')[2].split(':').map(Number)
  try { writeFileSync(`/sys/class/bdi/${major}:${minor}/read_ahead_kb`, `${readAheadKb}\n`) } catch (e) { console.error('read_ahead_kb:', e.message) }
  const conn = `/sys/fs/fuse/connections/${major * 2 ** 20 + minor}`
  if (existsSync(conn)) {
    try { writeFileSync(join(conn, 'max_background'), `${maxBackground}\n`); writeFileSync(join(conn, 'congestion_threshold'), `${Math.floor(maxBackground * 3 / 4)}\n`) } catch (e) { console.error('fusectl:', e.message) }
  }
  console.log('ready')
})
const stop = () => fuse.unmount(() => { console.error(`reads served: ${reads}, most in flight: ${maxInFlight}`); process.exit(0) })
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
