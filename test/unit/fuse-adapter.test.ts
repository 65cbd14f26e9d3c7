/**
 * The FUSE adapter (ModelFilesystem) over both bindings: a hand-built FileTree whose file contents come from
 * an in-test data path (Buffer answers for one layer, ranges of a real file for another), checked with real
 * syscalls. This process serves the mount, so it touches it only asynchronously (fs.promises, children).
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { constants as fsConstants, promises as fsp } from 'node:fs'
import { constants as osConstants, tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { FileDataPath, FileExtent, FileReadHandle, ReadResult } from '../../src/cache/types.js'
import { FileTree } from '../../src/index/tree.js'
import { ModelFilesystem, STATUS_BYTES, type LayerInfo } from '../../src/fuse/adapter.js'
import type { BindingName, FuseSession } from '../../src/fuse/binding.js'
import { loadBinding } from '../../src/fuse/select-binding.js'
import { AuthError, DeadlineError } from '../../src/registry/errors.js'
import { DEFAULTS } from '../../src/util/defaults.js'

const execFileAsync = promisify(execFile)
const E = osConstants.errno
const MTIME = 1_700_000_000_000
const MiB = 1024 * 1024
const owner = { layer: 0, what: 'test' }

/** Layer 0 answers with Buffers; layer 1 with ranges of `backing` (a plain file holding blob 1). */
class TestData implements FileDataPath {
  opens = 0
  releases = 0
  fail?: Error
  constructor(private readonly blobs: Buffer[], private readonly backing: { fd: number }, private readonly rangeDigest: string) {}
  open(extent: FileExtent): FileReadHandle { this.opens++; return { extent } }
  read(h: FileReadHandle, offset: number, length: number): ReadResult | Promise<ReadResult> {
    if (this.fail) return Promise.reject(this.fail)
    const { extent } = h
    const end = Math.min(offset + length, extent.size)
    if (end <= offset) return Buffer.alloc(0)
    if (extent.blob.digest === this.rangeDigest) return { fd: this.backing.fd, position: extent.offset + offset, length: end - offset }
    const blob = this.blobs.find((b) => `sha256:${b.length}` === extent.blob.digest)!
    return Promise.resolve(blob.subarray(extent.offset + offset, extent.offset + end))
  }
  release(): void { this.releases++ }
  cachedBytes(extent: FileExtent): number { return Math.floor(extent.size / 2) }
}

const BINDINGS: BindingName[] = ['fuse3', 'fuse-native']

describe.each(BINDINGS)('ModelFilesystem on %s', (bindingName) => {
  let dir: string
  let mp: string
  let session: FuseSession
  let data: TestData
  let backing: fsp.FileHandle
  const blob0 = randomBytes(8192)
  const blob1 = randomBytes(3 * MiB + 5)
  const ops: Array<{ op: string; errno: number }> = []
  let statusCalls = 0

  beforeAll(async () => {
    dir = await fsp.mkdtemp(join(tmpdir(), 'cnaifs-adapter-'))
    mp = join(dir, 'mnt')
    await fsp.mkdir(mp)
    await fsp.writeFile(join(dir, 'blob1'), blob1)
    backing = await fsp.open(join(dir, 'blob1'), 'r')
    const layers: LayerInfo[] = [
      { digest: `sha256:${blob0.length}`, mediaType: 'application/vnd.cncf.model.weight.config.v1.tar', size: blob0.length },
      { digest: 'sha256:layer-one', mediaType: 'application/vnd.cncf.model.weight.v1.tar+gzip', size: 999, content: { digest: 'sha256:diff-one', size: blob1.length } },
    ]
    const tree = new FileTree(MTIME)
    const meta = { uid: 1000, gid: 1001, mtimeMs: MTIME }
    tree.add('models', { kind: 'directory', mode: 0o755, ...meta }, owner)
    tree.add('models/config.json', { kind: 'file', mode: 0o644, ...meta, size: 300, layer: 0, offset: 100 }, owner)
    tree.add('models/weights.bin', { kind: 'file', mode: 0o640, ...meta, size: 3 * MiB, layer: 1, offset: 5 }, { layer: 1, what: 'test' })
    tree.link('models/weights-link.bin', 'models/weights.bin', { layer: 1, what: 'test' })
    // Read only by the error test, so no page cache answers for them.
    tree.add('errors/auth.bin', { kind: 'file', mode: 0o644, ...meta, size: MiB, layer: 1, offset: 0 }, { layer: 1, what: 'test' })
    tree.add('errors/deadline.bin', { kind: 'file', mode: 0o644, ...meta, size: MiB, layer: 1, offset: MiB }, { layer: 1, what: 'test' })
    tree.add('models/sub/empty.txt', { kind: 'file', mode: 0o600, ...meta, size: 0, layer: 0, offset: 0 }, owner)
    tree.add('latest', { kind: 'symlink', mode: 0o777, ...meta, target: 'models/weights.bin' }, owner)
    data = new TestData([blob0], backing, 'sha256:diff-one')
    const fs = new ModelFilesystem({
      tree, layers, data,
      status: () => ({ state: 'mounted', calls: ++statusCalls }),
      onOp: (op, _ms, errno) => ops.push({ op, errno }),
    })
    const { binding } = await loadBinding({ CNAIFS_FUSE: bindingName })
    session = await binding.mount(mp, fs, {
      fsname: 'cnaifs:test/adapter:v1', subtype: 'cnaifs', allowOther: false,
      attrTimeoutS: 3600, entryTimeoutS: 3600, negativeTimeoutS: 3600,
      readaheadBytes: DEFAULTS.fuse.readaheadBytes, maxBackground: 16, congestionThreshold: 12,
    })
  })

  afterAll(async () => {
    await session?.unmount()
    await backing?.close()
    await fsp.rm(dir, { recursive: true, force: true })
  })

  it('lists directories with entry types, never the status document', async () => {
    expect((await fsp.readdir(mp)).sort()).toEqual(['errors', 'latest', 'models'])
    expect((await fsp.readdir(join(mp, 'models'))).sort()).toEqual(['config.json', 'sub', 'weights-link.bin', 'weights.bin'])
    const types = Object.fromEntries((await fsp.readdir(mp, { withFileTypes: true })).map((d) => [d.name, d.isDirectory() ? 'd' : d.isSymbolicLink() ? 'l' : 'f']))
    expect(types).toEqual({ errors: 'd', latest: 'l', models: 'd' })
  })

  it('stats files and directories as the tree describes them; hard links share an inode', async () => {
    const st = await fsp.stat(join(mp, 'models/weights.bin'))
    expect([st.size, st.mode & 0o7777, st.uid, st.gid, st.mtimeMs, st.nlink]).toEqual([3 * MiB, 0o640, 1000, 1001, MTIME, 2])
    expect((await fsp.stat(join(mp, 'models/weights-link.bin'))).ino).toBe(st.ino)
    const d = await fsp.stat(join(mp, 'models'))
    expect([d.isDirectory(), d.mode & 0o7777, d.nlink]).toEqual([true, 0o755, 3])
    expect((await fsp.stat(mp)).ino).toBe(1)
    expect(await fsp.readlink(join(mp, 'latest'))).toBe('models/weights.bin')
  })

  it('reads byte for byte from Buffer answers and from file-range answers, at odd offsets and across the end', async () => {
    expect((await fsp.readFile(join(mp, 'models/config.json'))).equals(blob0.subarray(100, 400))).toBe(true)
    expect((await fsp.readFile(join(mp, 'models/weights.bin'))).equals(blob1.subarray(5, 5 + 3 * MiB))).toBe(true)
    const fh = await fsp.open(join(mp, 'models/weights.bin'), 'r')
    try {
      const buf = Buffer.alloc(300_000)
      const { bytesRead } = await fh.read(buf, 0, buf.length, 3 * MiB - 1234)
      expect(bytesRead).toBe(1234)
      expect(buf.subarray(0, 1234).equals(blob1.subarray(5 + 3 * MiB - 1234, 5 + 3 * MiB))).toBe(true)
    } finally {
      await fh.close()
    }
    expect(await fsp.readFile(join(mp, 'models/sub/empty.txt'))).toHaveLength(0)
  })

  it('answers ENOENT, ENOTDIR and EROFS where they are true', async () => {
    await expect(fsp.stat(join(mp, 'nope'))).rejects.toMatchObject({ code: 'ENOENT' })
    await expect(fsp.stat(join(mp, 'models/config.json/child'))).rejects.toMatchObject({ code: 'ENOTDIR' })
    await expect(fsp.writeFile(join(mp, 'models/config.json'), 'x')).rejects.toMatchObject({ code: 'EROFS' })
    await expect(fsp.mkdir(join(mp, 'new'))).rejects.toMatchObject({ code: 'EROFS' })
    await expect(fsp.access(join(mp, 'models/config.json'), fsConstants.W_OK)).rejects.toMatchObject({ code: 'EROFS' })
    await expect(fsp.access(join(mp, 'models/config.json'), fsConstants.R_OK)).resolves.toBeUndefined()
  })

  it('turns data-path errors into the errno that tells the truth: EACCES for refused credentials, EIO for deadlines', async () => {
    // A file not read before (no page cache), in a child process so a bug cannot hang this one.
    const readIn = async (path: string): Promise<string> => {
      const r = await execFileAsync(process.execPath, ['-e', `require('fs').readFile(${JSON.stringify(path)}, (e) => console.log(e ? e.code : 'ok'))`])
      return r.stdout.trim()
    }
    data.fail = new AuthError('the registry refused the credentials')
    expect(await readIn(join(mp, 'errors/auth.bin'))).toBe('EACCES')
    data.fail = new DeadlineError('read of blob x: deadline exceeded')
    expect(await readIn(join(mp, 'errors/deadline.bin'))).toBe('EIO')
    data.fail = undefined
    expect(ops.some((o) => o.op === 'read' && o.errno === E.EACCES)).toBe(true)
  })

  it('xattrs name the layer blob, its media type, the cached bytes, and the diffId of a compressed layer', async () => {
    const get = async (p: string, name: string) => (await execFileAsync('getfattr', ['--only-values', '-n', name, join(mp, p)])).stdout
    expect(await get('models/weights.bin', 'user.cnaifs.digest')).toBe('sha256:layer-one')
    expect(await get('models/weights.bin', 'user.cnaifs.diffid')).toBe('sha256:diff-one')
    expect(await get('models/weights.bin', 'user.cnaifs.mediatype')).toBe('application/vnd.cncf.model.weight.v1.tar+gzip')
    expect(await get('models/weights.bin', 'user.cnaifs.cached')).toBe(String(1.5 * MiB))
    const dump = (await execFileAsync('getfattr', ['-d', '-m', '-', join(mp, 'models/config.json')])).stdout
    expect(dump).toContain('user.cnaifs.digest=')
    expect(dump).not.toContain('user.cnaifs.diffid')
    await expect(execFileAsync('getfattr', ['-n', 'user.cnaifs.digest', join(mp, 'models')])).rejects.toMatchObject({ stderr: expect.stringMatching(/No such attribute/) })
  })

  it('statfs: the tree size, nothing free', async () => {
    const s = await fsp.statfs(mp)
    expect(s.bfree).toBe(0)
    expect(s.blocks * s.bsize).toBeGreaterThanOrEqual(3 * MiB + 300)
  })

  it('the status document: found by name, re-read at every open, padded JSON of a fixed size', async () => {
    const path = join(mp, '.cnaifs', 'status')
    const first = await fsp.readFile(path, 'utf8')
    expect(first).toHaveLength(STATUS_BYTES)
    expect(first.endsWith('\n')).toBe(true)
    const a = JSON.parse(first) as { state: string; calls: number }
    expect(a.state).toBe('mounted')
    const b = JSON.parse(await fsp.readFile(path, 'utf8')) as { calls: number }
    expect(b.calls).toBeGreaterThan(a.calls)
    expect((await fsp.stat(path)).size).toBe(STATUS_BYTES)
    expect(await fsp.readdir(join(mp, '.cnaifs'))).toEqual(['status'])
    await expect(fsp.writeFile(path, 'x')).rejects.toMatchObject({ code: 'EROFS' })
  })

  it('releases data-path handles when files are closed', async () => {
    const fh = await fsp.open(join(mp, 'models/config.json'), 'r')
    const releases = data.releases
    await fh.close()
    for (let i = 0; i < 100 && data.releases === releases; i++) await new Promise((r) => setTimeout(r, 20))
    expect(data.releases).toBe(releases + 1)
  })
})
