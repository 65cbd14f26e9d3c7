/**
 * The FUSE adapter alone: a hand-built FileTree served from in-memory blobs, checked with real syscalls.
 *
 * The filesystem is served by this very process (fuse-native answers on the JS event loop), so every access
 * to a mount here must be asynchronous (fs.promises, async child_process): a sync call would block the loop
 * that has to answer it.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { promises as fsp, constants as fsConstants } from 'node:fs'
import { execFile, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { promisify } from 'node:util'
import { pino } from 'pino'
import { FileTree } from '../../src/index/tree.js'
import type { FileContentReader, FileExtent, ReadHandle } from '../../src/cache/types.js'
import { CnaifsError } from '../../src/util/errors.js'
import { ModelFilesystem, clearStaleMount, isMounted, type LayerInfo } from '../../src/fuse/filesystem.js'

const execFileAsync = promisify(execFile)
const owner = { layer: 0, what: 'test' }
const MTIME = 1_700_000_000_123

// ---------------------------------------------------------------------------------------------------------
// Fixtures

/** Serves extents from one Buffer per blob digest; `hook` runs before each read (delay, gate or throw). */
class MemoryReader implements FileContentReader {
  readonly reads: Array<{ digest: string; offset: number; length: number }> = []
  opens = 0
  releases = 0
  hook?: (extent: FileExtent, offset: number, length: number) => Promise<void>

  constructor(private readonly blobs: Map<string, Buffer>) {}

  open(extent: FileExtent): ReadHandle {
    this.opens++
    return { extent }
  }

  async read(handle: ReadHandle, offset: number, length: number): Promise<Buffer> {
    const { extent } = handle
    this.reads.push({ digest: extent.blob.digest, offset, length })
    if (this.hook) await this.hook(extent, offset, length)
    const blob = this.blobs.get(extent.blob.digest)
    if (!blob) throw new Error(`no blob ${extent.blob.digest}`)
    if (offset < 0 || offset + length > extent.size) throw new Error(`read past end: ${offset}+${length} > ${extent.size}`)
    return blob.subarray(extent.offset + offset, extent.offset + offset + length)
  }

  release(): void {
    this.releases++
  }

  cachedBytes(extent: FileExtent): number {
    return Math.floor(extent.size / 2)
  }
}

function digestOf(b: Buffer): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex')
}

interface Fixture {
  tree: FileTree
  layers: LayerInfo[]
  blobs: Buffer[]
  reader: MemoryReader
  /** Expected file contents by path. */
  content: Map<string, Buffer>
}

const WEIGHTS_OFFSET = 512
const WEIGHTS_SIZE = 1024 * 1024 + 123 // several 128 KiB kernel reads, not block-aligned

function buildFixture(): Fixture {
  const blobs = [randomBytes(8192), randomBytes(2 * 1024 * 1024), randomBytes(4096)]
  const layers: LayerInfo[] = [
    { digest: digestOf(blobs[0]), mediaType: 'application/vnd.cncf.model.weight.config.v1.tar', size: blobs[0].length },
    { digest: digestOf(blobs[1]), mediaType: 'application/vnd.cncf.model.weight.v1.tar', size: blobs[1].length },
    { digest: digestOf(blobs[2]), mediaType: 'application/vnd.cncf.model.doc.v1.tar', size: blobs[2].length },
  ]
  const tree = new FileTree(MTIME)
  const meta = { uid: 1000, gid: 1001, mtimeMs: MTIME }
  tree.add('models', { kind: 'directory', mode: 0o755, ...meta }, owner)
  tree.add('models/config.json', { kind: 'file', mode: 0o644, ...meta, size: 300, layer: 0, offset: 0 }, owner)
  tree.add('models/weights.bin', { kind: 'file', mode: 0o640, ...meta, size: WEIGHTS_SIZE, layer: 1, offset: WEIGHTS_OFFSET }, { layer: 1, what: 'test' })
  tree.link('models/weights-link.bin', 'models/weights.bin', { layer: 1, what: 'test' })
  tree.add('models/sub/empty.txt', { kind: 'file', mode: 0o600, ...meta, size: 0, layer: 0, offset: 0 }, owner)
  tree.add('README.md', { kind: 'file', mode: 0o644, ...meta, size: 1000, layer: 0, offset: 5000 }, owner)
  tree.add('latest', { kind: 'symlink', mode: 0o777, ...meta, target: 'models/weights.bin' }, owner)
  tree.add('docs/slow.md', { kind: 'file', mode: 0o644, ...meta, size: 100, layer: 2, offset: 7 }, { layer: 2, what: 'test' })
  tree.add('docs/broken.md', { kind: 'file', mode: 0o644, ...meta, size: 200, layer: 2, offset: 1000 }, { layer: 2, what: 'test' })

  const content = new Map<string, Buffer>([
    ['models/config.json', blobs[0].subarray(0, 300)],
    ['models/weights.bin', blobs[1].subarray(WEIGHTS_OFFSET, WEIGHTS_OFFSET + WEIGHTS_SIZE)],
    ['models/sub/empty.txt', Buffer.alloc(0)],
    ['README.md', blobs[0].subarray(5000, 6000)],
  ])
  const reader = new MemoryReader(new Map(blobs.map((b, i) => [layers[i].digest, b])))
  return { tree, layers, blobs, reader, content }
}

async function tempMountpoint(): Promise<string> {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'cnaifs-fuse-'))
  const mnt = join(dir, 'mnt')
  await fsp.mkdir(mnt)
  return mnt
}

/** Unmounts (ignoring errors: this runs after failures too) and removes the temp dir. */
async function cleanup(fs: ModelFilesystem | undefined, mnt: string | undefined): Promise<void> {
  if (fs) await fs.unmount().catch(() => undefined)
  if (mnt) {
    await clearStaleMount(mnt).catch(() => false)
    if (!(await isMounted(mnt).catch(() => true))) await fsp.rm(join(mnt, '..'), { recursive: true, force: true })
  }
}

function mountinfoLine(mnt: string, text: string): string | undefined {
  return text.split('\n').filter((l) => l.split(' ')[4] === mnt).pop()
}

/** Collects pino output lines so tests can look at what was logged. */
function captureLogger() {
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>)
      cb()
    },
  })
  return { log: pino({ level: 'debug' }, stream), lines }
}


// Reads xattrs through the real syscalls; getfattr (apt package `attr`) is not installed here, so python3's
// os.getxattr plus ctypes for the size probe (getxattr with a NULL buffer) and a too-small buffer.
const XATTR_PY = `
import os, sys, json, ctypes
p = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.getxattr.restype = ctypes.c_ssize_t
def raw(name, size):
    buf = ctypes.create_string_buffer(size) if size else None
    n = libc.getxattr(p.encode(), name.encode(), buf, size)
    return n if n >= 0 else -ctypes.get_errno()
def err(f):
    try:
        f()
        return 0
    except OSError as e:
        return e.errno
names = os.listxattr(p)
print(json.dumps({
    'names': names,
    'values': {n: os.getxattr(p, n).decode() for n in names},
    'probe': raw('user.cnaifs.digest', 0),
    'small': raw('user.cnaifs.digest', 4),
    'missing': err(lambda: os.getxattr(p, 'user.nope')),
    'set': err(lambda: os.setxattr(p, 'user.x', b'1')),
    'remove': err(lambda: os.removexattr(p, 'user.cnaifs.digest')),
}))
`
interface XattrReport { names: string[]; values: Record<string, string>; probe: number; small: number; missing: number; set: number; remove: number }

async function xattrReport(path: string): Promise<XattrReport> {
  const { stdout } = await execFileAsync('python3', ['-c', XATTR_PY, path])
  return JSON.parse(stdout) as XattrReport
}

const ENODATA = 61
const ERANGE = 34
const EROFS = 30

// ---------------------------------------------------------------------------------------------------------

describe('ModelFilesystem over a hand-built tree', () => {
  let fx: Fixture
  let mnt: string
  let fs: ModelFilesystem | undefined
  const ops: Array<{ op: string; errno: number }> = []

  beforeAll(async () => {
    fx = buildFixture()
    mnt = await tempMountpoint()
    fs = new ModelFilesystem(mnt, { tree: fx.tree, layers: fx.layers, reader: fx.reader, onOp: (op, _ms, errno) => ops.push({ op, errno }) })
    await fs.mount()
  })
  afterAll(async () => {
    await cleanup(fs, mnt)
  })

  it('is mounted read-only as fuse.cnaifs with the cache options', async () => {
    expect(await isMounted(mnt)).toBe(true)
    const line = mountinfoLine(mnt, await fsp.readFile('/proc/self/mountinfo', 'utf8'))
    expect(line).toBeDefined()
    const [before, after] = (line as string).split(' - ')
    expect(before.split(' ')[5].split(',')).toContain('ro')
    const [fstype, source] = after.split(' ')
    expect(fstype).toBe('fuse.cnaifs')
    expect(source).toBe('cnaifs')
    expect(after).toContain('default_permissions')
  })

  it('lists directories, with entry types', async () => {
    expect((await fsp.readdir(mnt)).sort()).toEqual(['README.md', 'docs', 'latest', 'models'])
    expect((await fsp.readdir(join(mnt, 'models'))).sort()).toEqual(['config.json', 'sub', 'weights-link.bin', 'weights.bin'])
    expect(await fsp.readdir(join(mnt, 'models/sub'))).toEqual(['empty.txt'])
    const types = Object.fromEntries((await fsp.readdir(mnt, { withFileTypes: true })).map((d) => [d.name, d.isDirectory() ? 'd' : d.isSymbolicLink() ? 'l' : d.isFile() ? 'f' : '?']))
    expect(types).toEqual({ 'README.md': 'f', docs: 'd', latest: 'l', models: 'd' })
  })

  it('stats files and directories as the tree describes them', async () => {
    const st = await fsp.stat(join(mnt, 'models/weights.bin'))
    expect(st.isFile()).toBe(true)
    expect(st.mode & 0o7777).toBe(0o640)
    expect(st.size).toBe(WEIGHTS_SIZE)
    expect(st.mtimeMs).toBe(MTIME)
    expect(st.uid).toBe(1000)
    expect(st.gid).toBe(1001)
    expect(st.nlink).toBe(2)
    expect(st.ino).toBe((fx.tree.lookup('models/weights.bin') as { ino: number }).ino)
    expect(st.blocks).toBe(Math.ceil(WEIGHTS_SIZE / 512))
    expect(st.blksize).toBe(131072)

    const dir = await fsp.stat(join(mnt, 'models'))
    expect(dir.isDirectory()).toBe(true)
    expect(dir.mode & 0o7777).toBe(0o755)
    expect(dir.nlink).toBe(3) // ., .., sub
    const root = await fsp.stat(mnt)
    expect(root.isDirectory()).toBe(true)
    expect(root.nlink).toBe(4) // models, docs
    expect(root.ino).toBe(1)

    const empty = await fsp.stat(join(mnt, 'models/sub/empty.txt'))
    expect(empty.size).toBe(0)
    expect(empty.mode & 0o7777).toBe(0o600)
  })

  it('reads file contents byte for byte, including at a blob offset and across many kernel reads', async () => {
    for (const [path, expected] of fx.content) {
      const got = await fsp.readFile(join(mnt, path))
      expect(got.length, path).toBe(expected.length)
      expect(got.equals(expected), path).toBe(true)
    }
    const weightReads = fx.reader.reads.filter((r) => r.digest === fx.layers[1].digest)
    expect(weightReads.length).toBeGreaterThan(1)
    expect(Math.max(...weightReads.map((r) => r.length))).toBeLessThanOrEqual(131072)
  })

  it('serves a partial read at an odd offset', async () => {
    const fh = await fsp.open(join(mnt, 'models/weights.bin'), 'r')
    try {
      const buf = Buffer.alloc(300_000)
      const { bytesRead } = await fh.read(buf, 0, buf.length, 777_777)
      expect(bytesRead).toBe(WEIGHTS_SIZE - 777_777)
      expect(buf.subarray(0, bytesRead).equals(fx.content.get('models/weights.bin')!.subarray(777_777))).toBe(true)
    } finally {
      await fh.close()
    }
  })

  it('keeps the page cache across opens (kernel_cache)', async () => {
    await fsp.readFile(join(mnt, 'models/config.json'))
    const before = fx.reader.reads.length
    const again = await fsp.readFile(join(mnt, 'models/config.json'))
    expect(again.equals(fx.content.get('models/config.json')!)).toBe(true)
    expect(fx.reader.reads.length).toBe(before)
  })

  it('releases reader handles when files are closed', async () => {
    const fh = await fsp.open(join(mnt, 'README.md'), 'r')
    const opens = fx.reader.opens
    const releases = fx.reader.releases
    await fh.close()
    // RELEASE is asynchronous in the kernel: give it a moment.
    for (let i = 0; i < 50 && fx.reader.releases === releases; i++) await new Promise((r) => setTimeout(r, 20))
    expect(fx.reader.opens).toBe(opens)
    expect(fx.reader.releases).toBe(releases + 1)
  })

  it('resolves symlinks and reports their target length as size', async () => {
    expect(await fsp.readlink(join(mnt, 'latest'))).toBe('models/weights.bin')
    const l = await fsp.lstat(join(mnt, 'latest'))
    expect(l.isSymbolicLink()).toBe(true)
    expect(l.size).toBe('models/weights.bin'.length)
    const through = await fsp.readFile(join(mnt, 'latest'))
    expect(through.equals(fx.content.get('models/weights.bin')!)).toBe(true)
  })

  it('gives hard links the same inode and content', async () => {
    const a = await fsp.stat(join(mnt, 'models/weights.bin'))
    const b = await fsp.stat(join(mnt, 'models/weights-link.bin'))
    expect(b.ino).toBe(a.ino)
    expect(b.nlink).toBe(2)
    const dirents = await fsp.readdir(join(mnt, 'models'), { withFileTypes: true })
    expect(dirents.find((d) => d.name === 'weights-link.bin')?.isFile()).toBe(true)
  })

  it('answers ENOENT for missing paths', async () => {
    await expect(fsp.stat(join(mnt, 'nope'))).rejects.toMatchObject({ code: 'ENOENT' })
    await expect(fsp.stat(join(mnt, 'models/nope/deeper'))).rejects.toMatchObject({ code: 'ENOENT' })
    await expect(fsp.readFile(join(mnt, 'models/missing.bin'))).rejects.toMatchObject({ code: 'ENOENT' })
    await expect(fsp.stat(join(mnt, 'models/config.json/child'))).rejects.toMatchObject({ code: 'ENOTDIR' })
  })

  it('refuses every modification with EROFS', async () => {
    const f = join(mnt, 'models/config.json')
    const erofs = { code: 'EROFS' }
    await expect(fsp.writeFile(f, 'x')).rejects.toMatchObject(erofs)
    await expect(fsp.writeFile(join(mnt, 'new.txt'), 'x')).rejects.toMatchObject(erofs)
    await expect(fsp.open(f, 'r+')).rejects.toMatchObject(erofs)
    await expect(fsp.open(join(mnt, 'created'), fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_WRONLY)).rejects.toMatchObject(erofs)
    await expect(fsp.appendFile(f, 'x')).rejects.toMatchObject(erofs)
    await expect(fsp.truncate(f, 0)).rejects.toMatchObject(erofs)
    await expect(fsp.mkdir(join(mnt, 'newdir'))).rejects.toMatchObject(erofs)
    await expect(fsp.rmdir(join(mnt, 'models/sub'))).rejects.toMatchObject(erofs)
    await expect(fsp.unlink(f)).rejects.toMatchObject(erofs)
    await expect(fsp.rename(f, join(mnt, 'models/renamed.json'))).rejects.toMatchObject(erofs)
    await expect(fsp.link(f, join(mnt, 'models/hard'))).rejects.toMatchObject(erofs)
    await expect(fsp.symlink('x', join(mnt, 'models/sym'))).rejects.toMatchObject(erofs)
    await expect(fsp.chmod(f, 0o600)).rejects.toMatchObject(erofs)
    await expect(fsp.chown(f, 1, 1)).rejects.toMatchObject(erofs)
    await expect(fsp.utimes(f, new Date(), new Date())).rejects.toMatchObject(erofs)
    await expect(fsp.access(f, fsConstants.W_OK)).rejects.toMatchObject(erofs)
    await expect(fsp.access(f, fsConstants.R_OK)).resolves.toBeUndefined()
    // Content is untouched.
    expect((await fsp.readFile(f)).equals(fx.content.get('models/config.json')!)).toBe(true)
  })

  it('exposes layer digest, media type and cached bytes as xattrs', async () => {
    const f = join(mnt, 'models/weights.bin')
    const r = await xattrReport(f)
    expect(r.names.sort()).toEqual(['user.cnaifs.cached', 'user.cnaifs.digest', 'user.cnaifs.mediatype'])
    expect(r.values['user.cnaifs.digest']).toBe(fx.layers[1].digest)
    expect(r.values['user.cnaifs.mediatype']).toBe(fx.layers[1].mediaType)
    expect(r.values['user.cnaifs.cached']).toBe(String(Math.floor(WEIGHTS_SIZE / 2)))
    expect(r.probe).toBe(fx.layers[1].digest.length) // size probe with a NULL buffer
    expect(r.small).toBe(-ERANGE) // a buffer too small for the value
    expect(r.missing).toBe(ENODATA)
    expect(r.set).toBe(EROFS)
    expect(r.remove).toBe(EROFS)

    const d = await xattrReport(join(mnt, 'models'))
    expect(d.names).toEqual([])
    expect(d.probe).toBe(-ENODATA)
  })

  it('works with getfattr', async () => {
    const { stdout } = await execFileAsync('getfattr', ['-n', 'user.cnaifs.digest', '--only-values', join(mnt, 'README.md')])
    expect(stdout).toBe(fx.layers[0].digest)
    const dump = await execFileAsync('getfattr', ['-d', '-m', '-', join(mnt, 'README.md')])
    expect(dump.stdout).toContain(`user.cnaifs.digest="${fx.layers[0].digest}"`)
  })

  it('reports the tree size through statfs, with nothing free', async () => {
    const s = await fsp.statfs(mnt)
    expect(s.type).toBe(0x65735546) // FUSE_SUPER_MAGIC
    expect(s.bfree).toBe(0)
    expect(s.bavail).toBe(0)
    expect(s.blocks).toBe(Math.ceil(fx.tree.stats().bytes / 4096))
  })

  it('reports operations to onOp', () => {
    expect(ops.some((o) => o.op === 'read' && o.errno === 0)).toBe(true)
    expect(ops.some((o) => o.op === 'getattr' && o.errno === 2)).toBe(true)
    expect(ops.some((o) => o.op === 'getxattr' && o.errno === ENODATA)).toBe(true)
  })

  it('answers clearStaleMount with false for a live mount', async () => {
    expect(await clearStaleMount(mnt)).toBe(false)
    expect(await isMounted(mnt)).toBe(true)
  })
})

describe('ModelFilesystem read failures', () => {
  let fx: Fixture
  let mnt: string
  let fs: ModelFilesystem | undefined
  const captured = captureLogger()

  beforeAll(async () => {
    fx = buildFixture()
    mnt = await tempMountpoint()
    fs = new ModelFilesystem(mnt, { tree: fx.tree, layers: fx.layers, reader: fx.reader, log: captured.log })
    await fs.mount()
  })
  afterAll(async () => {
    await cleanup(fs, mnt)
  })

  it('turns a reader deadline (ETIMEDOUT) into EIO promptly, and logs it once', async () => {
    fx.reader.hook = async (extent) => {
      if (extent.offset === 1000) { // docs/broken.md
        await new Promise((r) => setTimeout(r, 50))
        throw new CnaifsError('ETIMEDOUT', 'read of sha256:… timed out after 30000 ms')
      }
    }
    const started = Date.now()
    await expect(fsp.readFile(join(mnt, 'docs/broken.md'))).rejects.toMatchObject({ code: 'EIO' })
    await expect(fsp.readFile(join(mnt, 'docs/broken.md'))).rejects.toMatchObject({ code: 'EIO' })
    expect(Date.now() - started).toBeLessThan(10_000)
    const warns = captured.lines.filter((l) => l.level === 40 && l.op === 'read')
    expect(warns).toHaveLength(1) // identical messages are rate-limited
    expect(warns[0]).toMatchObject({ path: '/docs/broken.md', code: 'ETIMEDOUT', err: expect.stringContaining('timed out') })
    expect(fs!.inFlightReads().count).toBe(0)
  })

  it('raises readahead and max_background after mounting (when sysfs lets it)', async () => {
    const tuned = captured.lines.filter((l) => l.msg === 'tuned').map((l) => [l.file as string, l.value as number] as const)
    const refused = captured.lines.filter((l) => l.msg === 'cannot tune (not permitted?)')
    // Best effort by design: where sysfs is read-only (unprivileged, some containers) it is only logged.
    expect(tuned.length + refused.length).toBeGreaterThanOrEqual(1)
    for (const [file, value] of tuned) expect((await fsp.readFile(file, 'utf8')).trim(), file).toBe(String(value))
    if (process.getuid?.() === 0 && refused.length === 0) {
      expect(tuned.map(([f]) => f.split('/').pop()).sort()).toEqual(['congestion_threshold', 'max_background', 'read_ahead_kb'])
    }
  })

  // fuse-native would answer ETIMEDOUT by itself after 15 s unless its timeout is off: a slow read must still
  // succeed. Takes 16 s, so only on request.
  it('lets a read take longer than fuse-native\'s 15 s default', async () => {
    fx.reader.hook = async (extent) => { if (extent.offset === 5000) await new Promise((r) => setTimeout(r, 16_000)) } // README.md
    const got = await fsp.readFile(join(mnt, 'README.md'))
    expect(got.equals(fx.content.get('README.md')!)).toBe(true)
  }, 30_000)

  it('maps corrupt and unreachable blobs and plain errors to EIO', async () => {
    for (const err of [new CnaifsError('ECORRUPT', 'digest mismatch'), new CnaifsError('EUNREACHABLE', 'registry down'), new TypeError('bug')]) {
      fx.reader.hook = async () => { throw err }
      // A fresh file each round: a successful earlier read would sit in the page cache.
      await expect(fsp.readFile(join(mnt, 'models/config.json'))).rejects.toMatchObject({ code: 'EIO' })
    }
  })

  it('counts reads waiting on the reader', async () => {
    let release!: () => void
    const gate = new Promise<void>((r) => { release = r })
    fx.reader.hook = async (extent) => { if (extent.offset === 7) await gate } // docs/slow.md
    const pending = fsp.readFile(join(mnt, 'docs/slow.md'))
    for (let i = 0; i < 100 && fs!.inFlightReads().count === 0; i++) await new Promise((r) => setTimeout(r, 10))
    await new Promise((r) => setTimeout(r, 30))
    const during = fs!.inFlightReads()
    expect(during.count).toBe(1)
    expect(during.oldestMs).toBeGreaterThanOrEqual(25)
    release()
    const got = await pending
    expect(got.equals(fx.blobs[2].subarray(7, 107))).toBe(true)
    expect(fs!.inFlightReads()).toMatchObject({ count: 0, oldestMs: 0 })
  })
})

describe('ModelFilesystem ownership override', () => {
  let mnt: string
  let fs: ModelFilesystem | undefined
  afterAll(async () => {
    await cleanup(fs, mnt)
  })

  it('reports --uid/--gid for every node', async () => {
    const fx = buildFixture()
    mnt = await tempMountpoint()
    fs = new ModelFilesystem(mnt, { tree: fx.tree, layers: fx.layers, reader: fx.reader, uid: 4321, gid: 0 })
    await fs.mount()
    for (const p of ['', 'models', 'models/weights.bin', 'README.md']) {
      const st = await fsp.stat(join(mnt, p))
      expect(st.uid, p).toBe(4321)
      expect(st.gid, p).toBe(0) // 0 is an override too, not "unset"
    }
    expect((await fsp.lstat(join(mnt, 'latest'))).uid).toBe(4321)
  })
})

describe('mount lifecycle', () => {
  let mnt: string
  let fs: ModelFilesystem | undefined
  let child: ReturnType<typeof spawn> | undefined
  afterAll(async () => {
    child?.kill('SIGKILL')
    await cleanup(fs, mnt)
  })

  it('unmount leaves the directory unmounted and empty; mounting again works', async () => {
    const fx = buildFixture()
    mnt = await tempMountpoint()
    fs = new ModelFilesystem(mnt, { tree: fx.tree, layers: fx.layers, reader: fx.reader })
    await fs.mount()
    expect(await isMounted(mnt)).toBe(true)
    await fs.unmount()
    expect(await isMounted(mnt)).toBe(false)
    expect(await fsp.readdir(mnt)).toEqual([])
    await fs.unmount() // idempotent

    await fs.mount()
    expect((await fsp.readdir(mnt)).sort()).toEqual(['README.md', 'docs', 'latest', 'models'])
    await fs.unmount()
    expect(await isMounted(mnt)).toBe(false)
  })

  it('copes with a mountpoint whose name has spaces and shell metacharacters', async () => {
    const fx = buildFixture()
    const odd = join(mnt, '..', 'odd $(true) `true` $HOME name') // harmless if a shell ever expanded it
    const other = new ModelFilesystem(odd, { tree: fx.tree, layers: fx.layers, reader: fx.reader })
    try {
      await other.mount() // mkdir: true creates it
      expect(await isMounted(odd)).toBe(true)
      expect((await fsp.readdir(odd)).sort()).toEqual(['README.md', 'docs', 'latest', 'models'])
      await other.unmount()
      expect(await isMounted(odd)).toBe(false)
    } finally {
      await other.unmount().catch(() => undefined)
      if (await isMounted(odd)) await execFileAsync('fusermount', ['-uz', odd]).catch(() => undefined)
    }
  })

  it('refuses to mount twice or on a file', async () => {
    const fx = buildFixture()
    const a = new ModelFilesystem(mnt, { tree: fx.tree, layers: fx.layers, reader: fx.reader })
    const b = new ModelFilesystem(mnt, { tree: fx.tree, layers: fx.layers, reader: fx.reader })
    try {
      await a.mount()
      await expect(a.mount()).rejects.toMatchObject({ code: 'EMOUNT' })
      await expect(b.mount()).rejects.toMatchObject({ code: 'EMOUNT' }) // fuse-native: "Mountpoint in use"
    } finally {
      await a.unmount()
    }
    const file = join(mnt, '..', 'a-file')
    await fsp.writeFile(file, 'x')
    const c = new ModelFilesystem(file, { tree: fx.tree, layers: fx.layers, reader: fx.reader })
    await expect(c.mount()).rejects.toMatchObject({ code: 'EMOUNT' })
    expect(await isMounted(mnt)).toBe(false)
  })

  it('returns false from clearStaleMount and isMounted for a plain directory', async () => {
    expect(await clearStaleMount(mnt)).toBe(false)
    expect(await isMounted(mnt)).toBe(false)
    expect(await isMounted(join(mnt, 'does-not-exist'))).toBe(false)
  })

  it('clears the mount of a SIGKILLed daemon, then mounts over it', async () => {
    // A bare fuse-native mount in a child process (plain JS: the child cannot load our TypeScript).
    const fuseNative = createRequire(import.meta.url).resolve('fuse-native')
    const script = `
      const Fuse = require(process.env.FUSE_NATIVE)
      const dir = { mode: 0o40755, size: 4096, nlink: 2, uid: 0, gid: 0, mtime: 0, atime: 0, ctime: 0 }
      const fuse = new Fuse(process.env.MNT, {
        getattr: (p, cb) => p === '/' ? cb(0, dir) : cb(Fuse.ENOENT),
        readdir: (p, cb) => cb(0, ['ghost']),
      }, { timeout: false })
      fuse.mount((err) => { if (err) { console.error(err); process.exit(1) } console.log('mounted') })
    `
    child = spawn(process.execPath, ['-e', script], { env: { ...process.env, FUSE_NATIVE: fuseNative, MNT: mnt }, stdio: ['ignore', 'pipe', 'pipe'] })
    const proc = child
    await new Promise<void>((resolveMounted, reject) => {
      const timer = setTimeout(() => reject(new Error('child did not mount')), 15_000)
      let out = ''
      proc.stdout?.on('data', (d: Buffer) => { out += d.toString(); if (out.includes('mounted')) { clearTimeout(timer); resolveMounted() } })
      proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`child exited ${code}`)) })
    })
    expect(await fsp.readdir(mnt)).toEqual(['ghost']) // its mount is live
    expect(await clearStaleMount(mnt)).toBe(false)

    const exited = new Promise((r) => proc.once('exit', r))
    proc.kill('SIGKILL')
    await exited
    child = undefined

    // Attributes the kernel still caches could answer for up to a second (the child used libfuse's default).
    let code: string | undefined
    for (let i = 0; i < 30; i++) {
      code = await fsp.stat(mnt).then(() => undefined, (err: NodeJS.ErrnoException) => err.code)
      if (code === 'ENOTCONN') break
      await new Promise((r) => setTimeout(r, 100))
    }
    expect(code).toBe('ENOTCONN')
    expect(await isMounted(mnt)).toBe(true)

    expect(await clearStaleMount(mnt)).toBe(true)
    expect(await isMounted(mnt)).toBe(false)
    expect((await fsp.stat(mnt)).isDirectory()).toBe(true)

    const fx = buildFixture()
    fs = new ModelFilesystem(mnt, { tree: fx.tree, layers: fx.layers, reader: fx.reader })
    await fs.mount()
    expect((await fsp.readFile(join(mnt, 'README.md'))).equals(fx.content.get('README.md')!)).toBe(true)
    await fs.unmount()
    expect(await isMounted(mnt)).toBe(false)
  })

  it('mount() itself clears a stale mount', async () => {
    const fuseNative = createRequire(import.meta.url).resolve('fuse-native')
    const script = `
      const Fuse = require(process.env.FUSE_NATIVE)
      const fuse = new Fuse(process.env.MNT, { readdir: (p, cb) => cb(0, []) }, { timeout: false })
      fuse.mount((err) => { if (err) { console.error(err); process.exit(1) } console.log('mounted') })
    `
    child = spawn(process.execPath, ['-e', script], { env: { ...process.env, FUSE_NATIVE: fuseNative, MNT: mnt }, stdio: ['ignore', 'pipe', 'pipe'] })
    const proc = child
    await new Promise<void>((resolveMounted, reject) => {
      const timer = setTimeout(() => reject(new Error('child did not mount')), 15_000)
      proc.stdout?.on('data', (d: Buffer) => { if (d.toString().includes('mounted')) { clearTimeout(timer); resolveMounted() } })
      proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`child exited ${code}`)) })
    })
    const exited = new Promise((r) => proc.once('exit', r))
    proc.kill('SIGKILL')
    await exited
    child = undefined

    const fx = buildFixture()
    fs = new ModelFilesystem(mnt, { tree: fx.tree, layers: fx.layers, reader: fx.reader })
    await fs.mount()
    expect((await fsp.readdir(mnt)).sort()).toEqual(['README.md', 'docs', 'latest', 'models'])
    await fs.unmount()
    expect(await isMounted(mnt)).toBe(false)
  })
})
