/**
 * Both FUSE bindings (our fuse3 addon and fuse-native) under one suite: real mounts served by an in-test
 * FuseOps that keeps files in memory or answers reads from ranges of plain files, checked with real syscalls
 * from this process (asynchronous only: this process serves the mount) and from child processes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { constants as fsConstants, promises as fsp } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'
import { constants as osConstants, tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Worker } from 'node:worker_threads'
import { once } from 'node:events'
import {
  FuseErrno, ROOT_INO, type BindingName, type FuseAttr, type FuseBinding, type FuseDirEntry, type FuseMountOptions,
  type FuseOps, type FuseSession, type FuseStatfs, type ReadReply,
} from '../../src/fuse/binding.js'
import { loadBinding } from '../../src/fuse/select-binding.js'
import { packStatfs } from '../../src/fuse/fuse-native-binding.js'
import { fuse3MountOptions } from '../../src/fuse/fuse3-binding.js'
import { findMount, isMounted, parseMountinfo } from '../../src/fuse/mount-table.js'
import { CnaifsError } from '../../src/util/errors.js'
import { REPO_ROOT } from '../helpers/cli.js'
import { withDevFuseLock } from '../helpers/dev-fuse-lock.js'

const execFileAsync = promisify(execFile)
const E = osConstants.errno

const PYTHON = '/usr/bin/python3'
const MTIME = 1_700_000_000_123
const MIB = 1024 * 1024

// -----------------------------------------------------------------------------------------------------------
// The filesystem under test

interface Node {
  attr: FuseAttr
  parent: number
  children?: Map<string, number>
  target?: string
  /** File content in memory (Buffer replies). */
  data?: Buffer
  /** File content as a range of a plain file (FileRange replies). */
  range?: { fd: number; base: number; clamp: boolean; extra?: number; empty?: boolean }
  xattrs?: Map<string, () => Buffer>
}

class Deferred {
  resolve!: () => void
  readonly promise = new Promise<void>((res) => { this.resolve = res })
}

/** Resolves when `count()` reaches `n` (checked whenever `poke()` runs). */
class Counter {
  private value = 0
  private waiters: Array<{ n: number; d: Deferred }> = []
  get count(): number { return this.value }
  add(k = 1): void {
    this.value += k
    this.waiters = this.waiters.filter((w) => (this.value >= w.n ? (w.d.resolve(), false) : true))
  }
  reach(n: number): Promise<void> {
    if (this.value >= n) return Promise.resolve()
    const d = new Deferred()
    this.waiters.push({ n, d })
    return d.promise
  }
}

class TestFs implements FuseOps {
  readonly nodes = new Map<number, Node>()
  readonly reads: Array<{ ino: number; offset: number; length: number; reply: 'buffer' | 'range'; rangeLength?: number }> = []
  readonly waitingReads = new Counter()
  readonly listings = new Map<number, number>()
  readonly forgets: Array<[number, number]> = []
  lookups = 0
  opens = 0
  readonly releases = new Counter()
  /** Reads of these inodes wait for the gate. */
  gates = new Map<number, Deferred>()
  private nextIno = ROOT_INO

  constructor() {
    this.add(0, '', { mode: 0o040755 })
  }

  add(parent: number, name: string, n: { mode: number; data?: Buffer; size?: number; target?: string; range?: Node['range']; xattrs?: Record<string, () => Buffer> }): number {
    const ino = this.nextIno++
    const size = n.data?.length ?? n.size ?? (n.target !== undefined ? Buffer.byteLength(n.target) : 4096)
    const node: Node = {
      attr: { ino, mode: n.mode, nlink: 1, uid: 0, gid: 0, size, blocks: Math.ceil(size / 512), blksize: 4096, atimeMs: MTIME, mtimeMs: MTIME, ctimeMs: MTIME },
      parent: parent || ROOT_INO,
      data: n.data,
      target: n.target,
      range: n.range,
      xattrs: n.xattrs ? new Map(Object.entries(n.xattrs)) : undefined,
    }
    if ((n.mode & 0o170000) === 0o040000) node.children = new Map()
    this.nodes.set(ino, node)
    if (parent) this.node(parent).children!.set(name, ino)
    return ino
  }

  private node(ino: number): Node {
    const n = this.nodes.get(ino)
    if (!n) throw new FuseErrno(E.ENOENT)
    return n
  }

  lookup(parent: number, name: string): FuseAttr {
    this.lookups++
    const dir = this.node(parent)
    const child = dir.children?.get(name)
    if (child === undefined) throw new FuseErrno(E.ENOENT)
    return this.node(child).attr
  }

  forget(ino: number, nlookup: number): void {
    this.forgets.push([ino, nlookup])
  }

  getattr(ino: number): FuseAttr {
    return this.node(ino).attr
  }

  readlink(ino: number): string {
    const n = this.node(ino)
    if (n.target === undefined) throw new FuseErrno(E.EINVAL)
    return n.target
  }

  open(ino: number): number {
    const n = this.node(ino)
    if (n.children) throw new FuseErrno(E.EISDIR)
    this.opens++
    return 1000 + ino
  }

  async read(ino: number, fh: number, offset: number, length: number): Promise<ReadReply> {
    if (fh !== 1000 + ino) throw new FuseErrno(E.EBADF)
    const n = this.node(ino)
    const gate = this.gates.get(ino)
    if (gate) {
      this.waitingReads.add()
      await gate.promise
    }
    if (n.range) {
      const r = n.range
      let len = r.clamp ? Math.max(0, Math.min(length, n.attr.size - offset)) : length + (r.extra ?? 0)
      if (r.empty) len = 0
      this.reads.push({ ino, offset, length, reply: 'range', rangeLength: len })
      return { fd: r.fd, position: r.base + offset, length: len }
    }
    this.reads.push({ ino, offset, length, reply: 'buffer' })
    return n.data!.subarray(offset, offset + length)
  }

  release(): void {
    this.releases.add()
  }

  opendir(ino: number): number {
    if (!this.node(ino).children) throw new FuseErrno(E.ENOTDIR)
    return 7
  }

  readdir(ino: number, fh: number): FuseDirEntry[] {
    if (fh !== 7) throw new FuseErrno(E.EBADF)
    this.listings.set(ino, (this.listings.get(ino) ?? 0) + 1)
    const dir = this.node(ino)
    const out: FuseDirEntry[] = [{ name: '.', attr: dir.attr }, { name: '..', attr: this.node(dir.parent).attr }]
    for (const [name, child] of dir.children!) out.push({ name, attr: this.node(child).attr })
    return out
  }

  releasedir(): void {}

  getxattr(ino: number, name: string): Buffer {
    const get = this.node(ino).xattrs?.get(name)
    if (!get) throw new FuseErrno(E.ENODATA)
    return get()
  }

  listxattr(ino: number): string[] {
    return [...(this.node(ino).xattrs?.keys() ?? [])]
  }

  statfs(): FuseStatfs {
    return { bsize: 4096, frsize: 4096, blocks: 1000, bfree: 0, bavail: 0, files: 3100, ffree: 0, favail: 0, namemax: 255 }
  }

  access(ino: number): void {
    this.node(ino)
  }
}

// -----------------------------------------------------------------------------------------------------------
// Fixtures

const BIG_DIR_ENTRIES = 3000
const RANGE_BASE = 12_345 // the file's bytes start here in the backing file: FileRange position ≠ file offset
const DATA_SIZE = 3 * MIB + 123
const GATED_SIZE = 64 * MIB

interface Fixture {
  fs: TestFs
  dir: string
  /** Held open for the whole suite: a FileHandle left unreferenced is closed by the garbage collector. */
  backing: FileHandle
  hello: Buffer
  mem: Buffer
  data: Buffer
  ino: Record<string, number>
}

async function buildFixture(): Promise<Fixture> {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'cnaifs-bindings-'))
  const hello = Buffer.from('hello world\n')
  const mem = randomBytes(2 * MIB + 77)
  const data = randomBytes(DATA_SIZE)
  await fsp.writeFile(join(dir, 'backing.bin'), Buffer.concat([randomBytes(RANGE_BASE), data]))
  const backing = await fsp.open(join(dir, 'backing.bin'), 'r')
  const backingFd = backing.fd
  const fs = new TestFs()
  const ino: Record<string, number> = {}
  ino.hello = fs.add(ROOT_INO, 'hello.txt', { mode: 0o100644, data: hello })
  ino.mem = fs.add(ROOT_INO, 'mem.bin', { mode: 0o100644, data: mem })
  // Read once, buffered, by the request-size test (so nothing of it is in the page cache before).
  ino.stream = fs.add(ROOT_INO, 'stream.bin', { mode: 0o100644, data: Buffer.alloc(8 * MIB, 's') })
  // Ranges as asked (crossing the end of the backing file near the end: a short read there).
  ino.data = fs.add(ROOT_INO, 'data.bin', { mode: 0o100644, size: DATA_SIZE, range: { fd: backingFd, base: RANGE_BASE, clamp: false } })
  // Ranges clamped to the file; longer than asked (the binding must cut them); empty.
  ino.clamped = fs.add(ROOT_INO, 'clamped.bin', { mode: 0o100644, size: DATA_SIZE, range: { fd: backingFd, base: RANGE_BASE, clamp: true } })
  ino.over = fs.add(ROOT_INO, 'over.bin', { mode: 0o100644, size: DATA_SIZE, range: { fd: backingFd, base: RANGE_BASE, clamp: false, extra: 5000 } })
  ino.emptyRange = fs.add(ROOT_INO, 'empty-range.bin', { mode: 0o100644, size: 4096, range: { fd: backingFd, base: 0, clamp: true, empty: true } })
  ino.gated = fs.add(ROOT_INO, 'gated.bin', { mode: 0o100644, size: GATED_SIZE, range: { fd: backingFd, base: 0, clamp: true } })
  ino.link = fs.add(ROOT_INO, 'link', { mode: 0o120777, target: 'hello.txt' })
  let grow = 4
  ino.xattrs = fs.add(ROOT_INO, 'xattrs.txt', {
    mode: 0o100644, data: Buffer.from('x'),
    xattrs: {
      'user.small': () => Buffer.from('v1'),
      'user.big': () => Buffer.alloc(10_000, 'b'),
      // Grows by one byte per call, like user.cnaifs.cached while a file is being fetched.
      'user.grow': () => Buffer.alloc(grow++, 'g'),
    },
  })
  ino.sub = fs.add(ROOT_INO, 'sub', { mode: 0o040755 })
  ino.nested = fs.add(ino.sub, 'nested.txt', { mode: 0o100600, data: Buffer.from('nested\n') })
  ino.big = fs.add(ROOT_INO, 'big', { mode: 0o040755 })
  for (let i = 0; i < BIG_DIR_ENTRIES; i++) fs.add(ino.big, `entry-with-a-longish-name-${String(i).padStart(5, '0')}`, { mode: 0o100644, data: Buffer.from(String(i)) })
  return { fs, dir, backing, hello, mem, data, ino }
}

function mountOptions(over: Partial<FuseMountOptions> = {}): FuseMountOptions {
  return {
    fsname: 'cnaifs:registry.test/model,v1:latest', subtype: 'cnaifs', allowOther: false,
    attrTimeoutS: 60, entryTimeoutS: 60, negativeTimeoutS: 60,
    readaheadBytes: MIB, maxBackground: 128, congestionThreshold: 96,
    ...over,
  }
}

async function sh(cmd: string, args: string[], timeout = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(cmd, args, { timeout, maxBuffer: 64 * MIB })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string }
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) }
  }
}

async function python(script: string, ...args: string[]): Promise<unknown> {
  const r = await sh(PYTHON, ['-c', script, ...args])
  if (r.code !== 0) throw new Error(`python failed: ${r.stderr}`)
  return JSON.parse(r.stdout)
}

/** A child process that exits: its exit code and the first line it wrote to stderr. */
function runChild(cmd: string, args: string[]): { child: ChildProcess; done: Promise<{ code: number | null; stderr: string }> } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
  const done = new Promise<{ code: number | null; stderr: string }>((res) => child.on('exit', (code) => res({ code, stderr })))
  return { child, done }
}

/** Names of this process's threads matching `pattern`, once none is left (or those left after 20 s). */
async function untilNoThreadsNamed(pattern: RegExp): Promise<string[]> {
  const deadline = Date.now() + 20_000
  for (;;) {
    const names: string[] = []
    for (const tid of await fsp.readdir('/proc/self/task')) {
      const comm = (await fsp.readFile(`/proc/self/task/${tid}/comm`, 'utf8').catch(() => '')).trim()
      if (pattern.test(comm)) names.push(comm)
    }
    if (names.length === 0 || Date.now() > deadline) return names
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** Waits for a line starting with `prefix` on a child's stdout. */
function waitForLine(child: ChildProcess, prefix: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = ''
    let err = ''
    child.stderr?.on('data', (d: Buffer) => { err += d.toString() })
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString()
      const line = out.split('\n').find((l) => l.startsWith(prefix))
      if (line) resolve(line)
    })
    child.on('exit', (code) => reject(new Error(`child exited (${code}) before "${prefix}": ${err}`)))
  })
}

const XATTR_SCRIPT = `
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.getxattr.restype = ctypes.c_ssize_t
libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.listxattr.restype = ctypes.c_ssize_t
path = sys.argv[1].encode()
def result(r, buf):
    if r < 0:
        return {'errno': errno.errorcode[ctypes.get_errno()]}
    return {'r': r, 'value': buf.raw[:r].decode() if buf is not None else None}
def get(name, size):
    buf = ctypes.create_string_buffer(size) if size else None
    return result(libc.getxattr(path, name.encode(), buf, size), buf)
def lst(size):
    buf = ctypes.create_string_buffer(size) if size else None
    return result(libc.listxattr(path, buf, size), buf)
print(json.dumps({
  'probe': get('user.small', 0), 'small': get('user.small', 64), 'tooSmall': get('user.big', 100),
  'bigProbe': get('user.big', 0), 'big': get('user.big', 20000)['r'], 'missing': get('user.none', 64),
  'growProbe': get('user.grow', 0), 'grown': get('user.grow', get('user.grow', 0)['r'] - 1),
  'listProbe': lst(0), 'list': lst(1000), 'listTooSmall': lst(5),
}))
`

const EROFS_SCRIPT = `
import errno, json, os, sys
mp = sys.argv[1]
res = {}
def t(name, f):
    try:
        f()
        res[name] = 'ok'
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
t('open O_WRONLY', lambda: os.open(mp + '/hello.txt', os.O_WRONLY))
t('open O_RDWR', lambda: os.open(mp + '/hello.txt', os.O_RDWR))
t('open O_CREAT', lambda: os.open(mp + '/new.txt', os.O_WRONLY | os.O_CREAT, 0o644))
t('open O_TRUNC', lambda: os.open(mp + '/hello.txt', os.O_RDONLY | os.O_TRUNC))
t('mkdir', lambda: os.mkdir(mp + '/newdir'))
t('rmdir', lambda: os.rmdir(mp + '/sub'))
t('unlink', lambda: os.unlink(mp + '/hello.txt'))
t('rename', lambda: os.rename(mp + '/hello.txt', mp + '/renamed.txt'))
t('link', lambda: os.link(mp + '/hello.txt', mp + '/hardlink'))
t('symlink', lambda: os.symlink('hello.txt', mp + '/newlink'))
t('chmod', lambda: os.chmod(mp + '/hello.txt', 0o600))
t('chown', lambda: os.chown(mp + '/hello.txt', 1, 1))
t('utime', lambda: os.utime(mp + '/hello.txt', (1, 1)))
t('truncate', lambda: os.truncate(mp + '/hello.txt', 0))
t('setxattr', lambda: os.setxattr(mp + '/xattrs.txt', 'user.new', b'v'))
t('removexattr', lambda: os.removexattr(mp + '/xattrs.txt', 'user.small'))
t('mkfifo', lambda: os.mkfifo(mp + '/fifo'))
t('mknod', lambda: os.mknod(mp + '/node', 0o600 | 0o100000))
print(json.dumps(res))
`

// -----------------------------------------------------------------------------------------------------------

const BINDINGS: BindingName[] = ['fuse3', 'fuse-native']
const tempDirs: string[] = []

async function scratch(prefix: string): Promise<string> {
  const d = await fsp.mkdtemp(join(tmpdir(), prefix))
  tempDirs.push(d)
  return d
}

afterAll(async () => {
  for (const d of tempDirs) await fsp.rm(d, { recursive: true, force: true }).catch(() => {})
})

it('mount options say read-only, nosuid, nodev, and escape commas in the fsname', () => {
  expect(fuse3MountOptions(mountOptions({ allowOther: true }))).toBe(
    'ro,nosuid,nodev,default_permissions,fsname=cnaifs:registry.test/model\\,v1:latest,subtype=cnaifs,allow_other')
})

it('fuse-native statfs fields fit in uint32 by scaling the fragment size', () => {
  const s = packStatfs({ bsize: 4096, frsize: 4096, blocks: 2 ** 34, bfree: 2 ** 33, bavail: 2 ** 33, files: 2 ** 40, ffree: 0, favail: 0, namemax: 255 })
  expect(s.frsize * s.blocks).toBe(4096 * 2 ** 34)
  expect(Math.max(s.blocks, s.bfree, s.bavail)).toBeLessThanOrEqual(0xffffffff)
  expect(s.files).toBe(0xffffffff)
})

it('parses mountinfo, unescaping octal escapes', () => {
  const [m] = parseMountinfo('36 35 0:52 / /mnt/a\\040b ro,nosuid,nodev,relatime shared:1 - fuse.cnaifs cnaifs:x\\040y ro,user_id=0\n')
  expect(m).toMatchObject({ mountId: 36, major: 0, minor: 52, mountPoint: '/mnt/a b', fsType: 'fuse.cnaifs', source: 'cnaifs:x y' })
  expect(m.options).toEqual(['ro', 'nosuid', 'nodev', 'relatime'])
})

it('CNAIFS_FUSE picks a binding, and a bad value is a usage error', async () => {
  expect((await loadBinding({ CNAIFS_FUSE: 'fuse3' })).binding.name).toBe('fuse3')
  expect((await loadBinding({ CNAIFS_FUSE: 'fuse-native' })).binding.name).toBe('fuse-native')
  // Built by npm ci (native/build.mjs) on every machine that has the packages of scripts/install-system-deps.
  expect((await loadBinding({})).binding.name).toBe('fuse3')
  await expect(loadBinding({ CNAIFS_FUSE: 'fuse4' })).rejects.toMatchObject({ code: 'EUSAGE' })
})

describe.each(BINDINGS)('%s binding', (name) => {
  let binding: FuseBinding
  let f: Fixture
  let mp: string
  let session: FuseSession
  const unexpected: Array<[string, unknown]> = []

  beforeAll(async () => {
    binding = (await loadBinding({ CNAIFS_FUSE: name })).binding
    expect(binding.name).toBe(name)
    f = await buildFixture()
    tempDirs.push(f.dir)
    mp = join(f.dir, 'mnt')
    await fsp.mkdir(mp)
    session = await binding.mount(mp, f.fs, mountOptions({ onUnexpected: (op, err) => unexpected.push([op, err]) }))
  })

  afterAll(async () => {
    await session?.unmount()
    await f.backing.close()
    await fsp.rm(f.dir, { recursive: true, force: true }).catch(() => {})
  })

  it('reports the binding, the mountpoint and the largest read request', () => {
    expect(session.binding).toBe(name)
    expect(session.mountpoint).toBe(mp)
    expect(session.maxRead).toBe(name === 'fuse3' ? MIB : 128 * 1024)
  })

  it('looks up names and reports attributes', async () => {
    const st = await fsp.stat(join(mp, 'hello.txt'))
    expect(st.isFile()).toBe(true)
    expect(st.size).toBe(f.hello.length)
    expect(st.mode).toBe(0o100644)
    expect(st.ino).toBe(f.ino.hello)
    expect(st.mtimeMs).toBe(MTIME)
    expect(st.nlink).toBe(1)
    const nested = await fsp.stat(join(mp, 'sub', 'nested.txt'))
    expect(nested.mode).toBe(0o100600)
    expect(nested.ino).toBe(f.ino.nested)
    expect((await fsp.stat(join(mp, 'sub'))).isDirectory()).toBe(true)
    expect(await fsp.readFile(join(mp, 'sub', 'nested.txt'), 'utf8')).toBe('nested\n')
    await expect(fsp.stat(join(mp, 'missing.txt'))).rejects.toMatchObject({ code: 'ENOENT' })
    await expect(fsp.stat(join(mp, 'hello.txt', 'below-a-file'))).rejects.toMatchObject({ code: 'ENOTDIR' })
  })

  it('caches a miss as a negative entry', async () => {
    await expect(fsp.stat(join(mp, 'sub', 'absent'))).rejects.toMatchObject({ code: 'ENOENT' })
    const lookups = f.fs.lookups
    await expect(fsp.stat(join(mp, 'sub', 'absent'))).rejects.toMatchObject({ code: 'ENOENT' })
    expect(f.fs.lookups).toBe(lookups)
  })

  it('lists directories, a big one across many readdir pages from one listing', async () => {
    expect((await fsp.readdir(mp)).sort()).toEqual(['big', 'clamped.bin', 'data.bin', 'empty-range.bin', 'gated.bin', 'hello.txt', 'link', 'mem.bin', 'over.bin', 'stream.bin', 'sub', 'xattrs.txt'])
    const entries = await fsp.readdir(join(mp, 'big'), { withFileTypes: true })
    expect(entries).toHaveLength(BIG_DIR_ENTRIES)
    expect(new Set(entries.map((e) => e.name)).size).toBe(BIG_DIR_ENTRIES)
    expect(entries.every((e) => e.isFile())).toBe(true)
    // ~120 KiB of dirents: the kernel asked for many pages, the filesystem listed the directory once.
    expect(f.fs.listings.get(f.ino.big)).toBe(1)
    const { stdout } = await sh('ls', ['-i', join(mp, 'big')])
    const inos = stdout.trim().split('\n').map((l) => Number(l.trim().split(/\s+/)[0]))
    expect(inos).toHaveLength(BIG_DIR_ENTRIES)
    expect(Math.min(...inos)).toBeGreaterThan(f.ino.big)
    expect(await fsp.readFile(join(mp, 'big', 'entry-with-a-longish-name-02999'), 'utf8')).toBe('2999')
    await expect(fsp.readdir(join(mp, 'hello.txt'))).rejects.toMatchObject({ code: 'ENOTDIR' })
  })

  it('reads symlinks', async () => {
    expect(await fsp.readlink(join(mp, 'link'))).toBe('hello.txt')
    expect((await fsp.lstat(join(mp, 'link'))).isSymbolicLink()).toBe(true)
    expect(await fsp.readFile(join(mp, 'link'), 'utf8')).toBe('hello world\n')
    await expect(fsp.readlink(join(mp, 'hello.txt'))).rejects.toMatchObject({ code: 'EINVAL' })
  })

  it('answers xattrs: size probes, values, ERANGE for a short buffer, ENODATA', async () => {
    const r = await python(XATTR_SCRIPT, join(mp, 'xattrs.txt')) as Record<string, { r?: number; value?: string; errno?: string } | number>
    expect(r.probe).toEqual({ r: 2, value: null })
    expect(r.small).toEqual({ r: 2, value: 'v1' })
    expect(r.tooSmall).toEqual({ errno: 'ERANGE' })
    expect(r.bigProbe).toEqual({ r: 10_000, value: null })
    expect(r.big).toBe(10_000)
    expect(r.missing).toEqual({ errno: 'ENODATA' })
    // The value grew between the probe and the read: ERANGE, not a truncated value.
    expect(r.grown).toEqual({ errno: 'ERANGE' })
    expect(r.listProbe).toEqual({ r: 'user.small\0user.big\0user.grow\0'.length, value: null })
    expect(r.list).toEqual({ r: 'user.small\0user.big\0user.grow\0'.length, value: 'user.small\0user.big\0user.grow\0' })
    expect(r.listTooSmall).toEqual({ errno: 'ERANGE' })
    const { stdout } = await sh('getfattr', ['--absolute-names', '-n', 'user.small', '--only-values', join(mp, 'xattrs.txt')])
    expect(stdout).toBe('v1')
  })

  it('answers statfs', async () => {
    const s = await fsp.statfs(mp)
    expect(s.bsize).toBe(4096)
    expect(s.blocks).toBe(1000)
    expect(s.bfree).toBe(0)
    expect(s.files).toBe(3100)
  })

  it('refuses every kind of write with EROFS', async () => {
    const r = await python(EROFS_SCRIPT, mp) as Record<string, string>
    expect(Object.keys(r)).toHaveLength(18)
    for (const [op, result] of Object.entries(r)) expect(`${op}: ${result}`).toBe(`${op}: EROFS`)
    // Nothing changed, and no write reached the filesystem as an open.
    expect(await fsp.readFile(join(mp, 'hello.txt'), 'utf8')).toBe('hello world\n')
  })

  it('shows ro,nosuid,nodev, fuse.cnaifs and the fsname in the mount table', async () => {
    const line = (await fsp.readFile('/proc/mounts', 'utf8')).split('\n').find((l) => l.split(' ')[1] === mp)
    expect(line).toBeDefined()
    const [source, , fstype, opts] = line!.split(' ')
    expect(source).toBe('cnaifs:registry.test/model,v1:latest')
    expect(fstype).toBe('fuse.cnaifs')
    expect(opts.split(',')).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev', 'default_permissions']))
    const { stdout } = await sh('df', ['--output=source,fstype', mp])
    expect(stdout).toContain('cnaifs:registry.test/model,v1:latest')
  })

  it('answers reads from memory with the exact bytes', async () => {
    expect(await fsp.readFile(join(mp, 'hello.txt'))).toEqual(f.hello)
    expect((await fsp.readFile(join(mp, 'mem.bin'))).equals(f.mem)).toBe(true)
  })

  it('answers reads from file ranges with the exact bytes at every alignment', async () => {
    // O_DIRECT: the kernel forwards each read as asked (offset and length not page-aligned), so the
    // FileRange path sees unaligned ranges; buffered reads below see what readahead makes of them.
    const cases: Array<[number, number]> = [
      [0, 1], [1, 100], [4095, 4097], [4096, 4096], [RANGE_BASE, 70_000], [65_535, 131_073],
      [MIB - 1, 2 * MIB + 5], [DATA_SIZE - 10, 4096], [DATA_SIZE - 4096, 4096], [DATA_SIZE, 10], [7, 0],
    ]
    for (const file of ['data.bin', 'clamped.bin', 'over.bin']) {
      const fh = await fsp.open(join(mp, file), fsConstants.O_RDONLY | fsConstants.O_DIRECT)
      try {
        for (const [offset, length] of cases) {
          const buf = Buffer.alloc(length)
          const { bytesRead } = await fh.read(buf, 0, length, offset)
          const want = f.data.subarray(offset, offset + length)
          expect(`${file} ${offset}+${length}: ${bytesRead}`).toBe(`${file} ${offset}+${length}: ${want.length}`)
          expect(buf.subarray(0, bytesRead).equals(want)).toBe(true)
        }
      } finally {
        await fh.close()
      }
    }
    const ranges = f.fs.reads.filter((r) => r.reply === 'range')
    expect(ranges.some((r) => r.offset % 4096 !== 0)).toBe(true)
    // data.bin's ranges ran past the end of the backing file, over.bin's were longer than asked.
    expect(ranges.some((r) => r.ino === f.ino.data && r.offset + (r.rangeLength ?? 0) > DATA_SIZE)).toBe(true)
    expect(ranges.some((r) => r.ino === f.ino.over && (r.rangeLength ?? 0) > r.length)).toBe(true)
    // Buffered, through the page cache and readahead.
    for (const file of ['data.bin', 'clamped.bin']) expect((await fsp.readFile(join(mp, file))).equals(f.data)).toBe(true)
    const { stdout } = await sh('sha256sum', [join(mp, 'data.bin'), join(mp, 'over.bin')])
    const sums = stdout.trim().split('\n').map((l) => l.split(' ')[0])
    expect(sums[0]).toBe(sums[1])
  })

  it('answers an empty file range as end of file', async () => {
    const fh = await fsp.open(join(mp, 'empty-range.bin'), fsConstants.O_RDONLY | fsConstants.O_DIRECT)
    try {
      const { bytesRead } = await fh.read(Buffer.alloc(4096), 0, 4096, 0)
      expect(bytesRead).toBe(0)
    } finally {
      await fh.close()
    }
    expect(f.fs.reads.some((r) => r.ino === f.ino.emptyRange && r.rangeLength === 0)).toBe(true)
  })

  it(`sends read requests of up to ${name === 'fuse3' ? '1 MiB' : '128 KiB'}, buffered and direct`, async () => {
    let before = f.fs.reads.length
    const r = await sh('dd', [`if=${join(mp, 'stream.bin')}`, 'of=/dev/null', 'bs=1M'])
    expect(r.code, r.stderr).toBe(0)
    // Through the page cache: what readahead (read_ahead_kb = readaheadBytes, 1 MiB here) makes of 1 MiB reads.
    const buffered = f.fs.reads.slice(before).map((x) => x.length)
    expect(Math.max(...buffered)).toBe(session.maxRead)
    before = f.fs.reads.length
    const direct = await sh('dd', [`if=${join(mp, 'clamped.bin')}`, 'of=/dev/null', 'bs=4M', 'iflag=direct'])
    expect(direct.code, direct.stderr).toBe(0)
    const sizes = f.fs.reads.slice(before).map((x) => x.length)
    expect(Math.max(...sizes)).toBe(session.maxRead)
    expect(sizes.filter((n) => n === session.maxRead).length).toBeGreaterThanOrEqual(2)
  })

  it('keeps serving other files while 64 reads of one file wait', async () => {
    const gate = new Deferred()
    f.fs.gates.set(f.ino.gated, gate)
    const waitingBefore = f.fs.waitingReads.count
    const children = Array.from({ length: 64 }, (_, i) =>
      runChild('dd', [`if=${join(mp, 'gated.bin')}`, 'of=/dev/null', 'bs=4096', 'count=1', `skip=${i * 256}`, 'iflag=direct']))
    try {
      await f.fs.waitingReads.reach(waitingBefore + 64)
      expect(session.pendingRequests()).toBeGreaterThanOrEqual(64)
      // Other files still open, list and read while all 64 wait.
      expect(await fsp.readFile(join(mp, 'sub', 'nested.txt'), 'utf8')).toBe('nested\n')
      const cat = await sh('sha256sum', [join(mp, 'mem.bin')])
      expect(cat.code).toBe(0)
      expect(session.pendingRequests()).toBeGreaterThanOrEqual(64)
    } finally {
      f.fs.gates.delete(f.ino.gated)
      gate.resolve()
    }
    const results = await Promise.all(children.map((c) => c.done))
    expect(results.filter((r) => r.code !== 0)).toEqual([])
  })

  it('has answered every request, released every open file and reported nothing unexpected', async () => {
    // The kernel sends RELEASE in the background after the last close: wait for all of them, after which
    // nothing is in flight.
    await f.fs.releases.reach(f.fs.opens)
    expect(f.fs.releases.count).toBe(f.fs.opens)
    // The last release is answered once ops.release has returned (a microtask later on fuse-native).
    await new Promise((r) => setImmediate(r))
    expect(session.pendingRequests()).toBe(0)
    expect(unexpected).toEqual([])
  })
})

describe.each(BINDINGS)('%s session end', (name) => {
  let binding: FuseBinding
  let f: Fixture

  beforeAll(async () => {
    binding = (await loadBinding({ CNAIFS_FUSE: name })).binding
    f = await buildFixture()
    tempDirs.push(f.dir)
  })

  afterAll(async () => {
    await f.backing.close()
  })

  async function freshMount(): Promise<{ mp: string; session: FuseSession }> {
    // A name a shell would expand: nothing on the way (mount, fusermount, unmount) may go through one.
    const mp = await fsp.mkdtemp(join(f.dir, 'mnt $HOME `id` \\ '))
    return { mp, session: await binding.mount(mp, f.fs, mountOptions()) }
  }

  it('unmount answers the reads still waiting, and late answers are dropped', async () => {
    const { mp, session } = await freshMount()
    const gate = new Deferred()
    f.fs.gates.set(f.ino.gated, gate)
    const waitingBefore = f.fs.waitingReads.count
    const children = Array.from({ length: 16 }, (_, i) =>
      runChild('dd', [`if=${join(mp, 'gated.bin')}`, 'of=/dev/null', 'bs=4096', 'count=1', `skip=${i * 256}`, 'iflag=direct']))
    try {
      await f.fs.waitingReads.reach(waitingBefore + 16)
      expect(session.pendingRequests()).toBeGreaterThanOrEqual(16)
      await session.unmount()
      await session.ended
      expect(session.pendingRequests()).toBe(0)
      expect(await isMounted(mp)).toBe(false)
      const results = await Promise.all(children.map((c) => c.done))
      for (const r of results) {
        expect(r.code).not.toBe(0)
        expect(r.stderr).toMatch(/Input\/output error|Transport endpoint is not connected|Software caused connection abort/)
      }
    } finally {
      f.fs.gates.delete(f.ino.gated)
      gate.resolve() // the filesystem answers now; the binding drops these answers
    }
    if (name === 'fuse3') {
      // The loop thread, libfuse's workers, the reply pool and the waker are all gone (the loop thread is
      // joined by the addon's finalizer, which runs on this thread shortly after ended).
      expect(await untilNoThreadsNamed(/^cnaifs-/)).toEqual([])
    }
    // The late answers went nowhere, and the binding still mounts and serves.
    const again = await freshMount()
    expect(await fsp.readFile(join(again.mp, 'hello.txt'), 'utf8')).toBe('hello world\n')
    await again.session.unmount()
  })

  it.each([['fusermount', '-u'], ['fusermount', '-uz'], ['umount', '-l']])('ends the session when it is unmounted from outside (%s %s)', async (cmd, flag) => {
    const { mp, session } = await freshMount()
    expect(await fsp.readFile(join(mp, 'hello.txt'), 'utf8')).toBe('hello world\n')
    const r = await sh(cmd, [flag, mp])
    expect(r.code, r.stderr).toBe(0)
    await session.ended
    expect(await isMounted(mp)).toBe(false)
    expect(session.pendingRequests()).toBe(0)
    await session.unmount() // already over: resolves at once
  })

  it('ends the session when the kernel aborts the connection, and clears the dead mount', async () => {
    const { mp, session } = await freshMount()
    const m = await findMount(mp)
    expect(m).toBeDefined()
    await fsp.writeFile(`/sys/fs/fuse/connections/${m!.major * 2 ** 20 + m!.minor}/abort`, '1\n')
    await session.ended
    expect(await isMounted(mp)).toBe(false)
  })

  it('clears the stale mount of a SIGKILLed server and mounts again', async () => {
    const mp = await fsp.mkdtemp(join(f.dir, 'mnt-'))
    const child = spawn(process.execPath, [join(REPO_ROOT, 'test', 'helpers', 'fuse-serve.mjs'), REPO_ROOT, name, mp], { stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = new Promise<void>((res) => child.on('exit', () => res()))
    await waitForLine(child, 'ready')
    const served = await sh('cat', [join(mp, 'hello.txt')])
    expect(served.stdout).toBe(`hello from ${child.pid}\n`)
    child.kill('SIGKILL')
    await exited
    await expect(fsp.statfs(mp)).rejects.toMatchObject({ code: 'ENOTCONN' })
    const session = await binding.mount(mp, f.fs, mountOptions())
    try {
      expect(await fsp.readFile(join(mp, 'hello.txt'), 'utf8')).toBe('hello world\n')
    } finally {
      await session.unmount()
    }
  })

  it('lets other users in with allowOther', async () => {
    const mp = await fsp.mkdtemp(join(f.dir, 'mnt-'))
    await fsp.chmod(f.dir, 0o755)
    const session = await binding.mount(mp, f.fs, mountOptions({ allowOther: true }))
    try {
      const line = (await fsp.readFile('/proc/mounts', 'utf8')).split('\n').find((l) => l.split(' ')[1] === mp)
      expect(line).toContain('allow_other')
      const cat = await sh('runuser', ['-u', 'nobody', '--', 'cat', join(mp, 'hello.txt')])
      expect(cat.stdout).toBe('hello world\n')
      // default_permissions: the kernel checks modes itself (nested.txt is 0600, owned by root).
      const denied = await sh('runuser', ['-u', 'nobody', '--', 'cat', join(mp, 'sub', 'nested.txt')])
      expect(denied.stderr).toContain('Permission denied')
    } finally {
      await session.unmount()
    }
  })

  it('refuses to mount over a live mount', async () => {
    const { mp, session } = await freshMount()
    try {
      await expect(binding.mount(mp, f.fs, mountOptions())).rejects.toSatisfy((err: unknown) =>
        err instanceof CnaifsError && err.code === 'EMOUNT' && err.message.includes('already a mount point (fuse.cnaifs cnaifs:registry.test/model,v1:latest)'))
      expect(await fsp.readFile(join(mp, 'hello.txt'), 'utf8')).toBe('hello world\n')
    } finally {
      await session.unmount()
    }
  })

  it('refuses a mountpoint that is not a directory with a clear error', async () => {
    await expect(binding.mount(join(f.dir, 'backing.bin'), f.fs, mountOptions())).rejects.toSatisfy((err: unknown) =>
      err instanceof CnaifsError && err.code === 'EMOUNT' && /not a directory/.test(err.message))
    await expect(binding.mount(join(f.dir, 'nowhere'), f.fs, mountOptions())).rejects.toMatchObject({ code: 'EMOUNT' })
  })
})

describe.each(BINDINGS)('%s unprivileged mount', (name) => {
  let project: string

  beforeAll(async () => {
    const base = await scratch('cnaifs-unpriv-bindings-')
    await fsp.chmod(base, 0o755)
    project = join(base, 'project')
    // A copy the unprivileged user can read (the checkout may live under a private home directory).
    for (const part of ['dist', 'node_modules', 'package.json', join('native', 'build', 'Release', 'cnaifs_fuse.node'), join('test', 'helpers', 'fuse-serve.mjs')]) {
      await fsp.cp(join(REPO_ROOT, part), join(project, part), { recursive: true })
    }
    await execFileAsync('chmod', ['-R', 'a+rX', base])
  })

  // fusermount opens /dev/fuse with the user's rights: nobody needs it readable and writable, and other test
  // files change its mode too, so hold the lock (it also restores the mode).
  it('mounts through fusermount as nobody, private to that user, and unmounts', () => withDevFuseLock(async () => {
    await fsp.chmod('/dev/fuse', 0o666)
    const home = await scratch('cnaifs-nobody-')
    await fsp.chmod(home, 0o755)
    const mp = join(home, 'mnt')
    await fsp.mkdir(mp)
    await execFileAsync('chown', ['nobody', mp])
    const child = spawn('runuser', ['-u', 'nobody', '--', process.execPath, join(project, 'test', 'helpers', 'fuse-serve.mjs'), project, name, mp], { stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)))
    let server: number | undefined
    try {
      const ready = await waitForLine(child, 'ready')
      const [, maxRead, pid] = ready.split(' ').map(Number)
      server = pid
      expect(maxRead).toBe(name === 'fuse3' ? MIB : 128 * 1024)
      const m = (await fsp.readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === mp)
      expect(m).toContain('user_id=65534')
      expect(m).toMatch(/ ro,nosuid,nodev/)
      const cat = await sh('runuser', ['-u', 'nobody', '--', 'cat', join(mp, 'hello.txt')])
      expect(cat.stdout).toMatch(/^hello from \d+\n$/)
      // Without allow_other the mount is private to its user: even root is refused.
      await expect(fsp.readFile(join(mp, 'hello.txt'))).rejects.toMatchObject({ code: 'EACCES' })
    } finally {
      // The server (runuser's child) unmounts and exits on SIGTERM.
      if (server) process.kill(server, 'SIGTERM')
      else child.kill('SIGKILL')
      expect(await exited).toBe(0)
    }
    expect(await isMounted(mp)).toBe(false)
  }))
})

describe('fuse3 addon in a worker thread', () => {
  it('ends a live session when the worker is terminated, leaving no thread behind', async () => {
    const dir = await scratch('cnaifs-worker-')
    const mp = join(dir, 'mnt')
    await fsp.mkdir(mp)
    // The worker mounts with the built code (dist), as the daemon would, and never unmounts.
    const worker = new Worker(`
      const { parentPort, workerData } = require('node:worker_threads')
      const { pathToFileURL } = require('node:url')
      const { join } = require('node:path')
      import(pathToFileURL(join(workerData.root, 'dist', 'fuse', 'select-binding.js')).href).then(async ({ loadBinding }) => {
        const { binding } = await loadBinding({ CNAIFS_FUSE: 'fuse3' })
        const attr = (ino, mode, size) => ({ ino, mode, nlink: 1, uid: 0, gid: 0, size, blocks: 0, blksize: 4096, atimeMs: 0, mtimeMs: 0, ctimeMs: 0 })
        const data = Buffer.from('from the worker')
        const ops = {
          lookup: (p, n) => attr(2, 0o100644, data.length), getattr: (i) => (i === 1 ? attr(1, 0o40755, 0) : attr(2, 0o100644, data.length)),
          readlink: () => '', open: () => 1, read: (i, fh, off, len) => data.subarray(off, off + len), release: () => {},
          opendir: () => 1, readdir: () => [], releasedir: () => {}, getxattr: () => Buffer.alloc(0), listxattr: () => [],
          statfs: () => ({ bsize: 4096, frsize: 4096, blocks: 1, bfree: 0, bavail: 0, files: 1, ffree: 0, favail: 0, namemax: 255 }), access: () => {},
        }
        await binding.mount(workerData.mp, ops, { fsname: 'cnaifs:worker', subtype: 'cnaifs', allowOther: false, attrTimeoutS: 1, entryTimeoutS: 1, negativeTimeoutS: 0, readaheadBytes: 131072, maxBackground: 12, congestionThreshold: 9 })
        parentPort.postMessage('mounted')
      }, (err) => parentPort.postMessage(String(err)))
    `, { eval: true, workerData: { root: REPO_ROOT, mp } })
    const [message] = await once(worker, 'message')
    expect(message).toBe('mounted')
    expect(await fsp.readFile(join(mp, 'file'), 'utf8')).toBe('from the worker')
    await worker.terminate()
    expect(await untilNoThreadsNamed(/^cnaifs-/)).toEqual([])
    // The connection is gone (nothing could detach the mount from a dying worker); the next mount clears it.
    await expect(fsp.statfs(mp)).rejects.toMatchObject({ code: 'ENOTCONN' })
    const { binding } = await loadBinding({ CNAIFS_FUSE: 'fuse3' })
    const fs = new TestFs()
    fs.add(ROOT_INO, 'again.txt', { mode: 0o100644, data: Buffer.from('again') })
    const session = await binding.mount(mp, fs, mountOptions())
    try {
      expect(await fsp.readFile(join(mp, 'again.txt'), 'utf8')).toBe('again')
    } finally {
      await session.unmount()
    }
  })
})
