#!/usr/bin/env node
// A FUSE server in its own process, for tests that kill it or run it as another user:
//   node test/helpers/fuse-serve.mjs PROJECT_ROOT BINDING MOUNTPOINT
// mounts (with BINDING = fuse3 | fuse-native, built code from PROJECT_ROOT/dist) a root directory holding
// hello.txt ("hello from <pid>\n"), prints `ready <maxRead> <pid>` once mounted, and on SIGTERM unmounts, prints
// `ended` and exits 0. Errors go to stderr with exit code 1.
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

const [root, bindingName, mountpoint] = process.argv.slice(2)
const { loadBinding } = await import(pathToFileURL(join(root, 'dist', 'fuse', 'select-binding.js')).href)
const { FuseErrno } = await import(pathToFileURL(join(root, 'dist', 'fuse', 'binding.js')).href)

const hello = Buffer.from(`hello from ${process.pid}\n`)
const now = Date.now()
const uid = process.getuid()
const gid = process.getgid()
const attr = (ino, mode, size) => ({ ino, mode, nlink: 1, uid, gid, size, blocks: Math.ceil(size / 512), blksize: 4096, atimeMs: now, mtimeMs: now, ctimeMs: now })
const rootAttr = attr(1, 0o040755, 4096)
const helloAttr = attr(2, 0o100644, hello.length)
const ops = {
  lookup(parent, name) { if (parent === 1 && name === 'hello.txt') return helloAttr; throw new FuseErrno(2) },
  getattr(ino) { if (ino === 1) return rootAttr; if (ino === 2) return helloAttr; throw new FuseErrno(2) },
  readlink() { throw new FuseErrno(22) },
  open() { return 1 },
  read(_ino, _fh, offset, length) { return hello.subarray(offset, offset + length) },
  release() {},
  opendir() { return 1 },
  readdir() { return [{ name: '.', attr: rootAttr }, { name: '..', attr: rootAttr }, { name: 'hello.txt', attr: helloAttr }] },
  releasedir() {},
  getxattr() { throw new FuseErrno(61) },
  listxattr() { return [] },
  statfs() { return { bsize: 4096, frsize: 4096, blocks: 1, bfree: 0, bavail: 0, files: 2, ffree: 0, favail: 0, namemax: 255 } },
  access() {},
}

try {
  const { binding } = await loadBinding({ CNAIFS_FUSE: bindingName })
  const session = await binding.mount(mountpoint, ops, {
    fsname: `cnaifs:serve-${process.pid}`, subtype: 'cnaifs', allowOther: false,
    attrTimeoutS: 1, entryTimeoutS: 1, negativeTimeoutS: 0, readaheadBytes: 128 * 1024, maxBackground: 12, congestionThreshold: 9,
  })
  process.on('SIGTERM', () => {
    session.unmount().then(() => { process.stdout.write('ended\n'); process.exit(0) }, (err) => { process.stderr.write(`${err.message}\n`); process.exit(1) })
  })
  process.stdout.write(`ready ${session.maxRead} ${process.pid}\n`)
} catch (err) {
  process.stderr.write(`${err.message}\n`)
  process.exit(1)
}
