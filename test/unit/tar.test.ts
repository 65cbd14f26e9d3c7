import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, mkdirSync, writeFileSync, symlinkSync, linkSync, chmodSync, utimesSync, lutimesSync, readFileSync, rmSync, openSync, closeSync, readSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import {
  walkTar,
  parseHeaderBlock,
  normaliseEntryPath,
  TarFormatError,
  type RangeSource,
  type TarEntry,
} from '../../src/index/tar.js'

// ---------------------------------------------------------------------------------------------------------
// Range sources that count reads, so the tests can pin the walker's I/O pattern.

abstract class CountingSource implements RangeSource {
  reads = 0
  bytesRead = 0
  readonly calls: Array<[number, number]> = []
  abstract readonly size: number
  protected abstract readBytes(offset: number, length: number): Buffer

  async read(offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new Error(`read past end: ${offset}+${length} > ${this.size}`)
    }
    this.reads++
    this.bytesRead += length
    this.calls.push([offset, length])
    return this.readBytes(offset, length)
  }
}

class FileSource extends CountingSource {
  readonly size: number
  private readonly fd: number

  constructor(path: string) {
    super()
    this.size = statSync(path).size
    this.fd = openSync(path, 'r')
  }

  protected readBytes(offset: number, length: number): Buffer {
    const buffer = Buffer.alloc(length)
    const n = readSync(this.fd, buffer, 0, length, offset)
    return buffer.subarray(0, n)
  }

  close(): void {
    closeSync(this.fd)
  }
}

/** Serves `head` from offset 0 and zeros beyond it, claiming any size: a 9 GiB tar without 9 GiB of disk. */
class SyntheticSource extends CountingSource {
  constructor(
    private readonly head: Buffer,
    readonly size: number = head.length,
  ) {
    super()
  }

  protected readBytes(offset: number, length: number): Buffer {
    const out = Buffer.alloc(length)
    if (offset < this.head.length) this.head.copy(out, 0, offset, Math.min(this.head.length, offset + length))
    return out
  }
}

async function walkFile(path: string, options?: Parameters<typeof walkTar>[1]): Promise<{ entries: TarEntry[]; source: FileSource }> {
  const source = new FileSource(path)
  try {
    return { entries: await walkTar(source, options), source }
  } finally {
    source.close()
  }
}

async function readData(path: string, entry: TarEntry): Promise<Buffer> {
  const source = new FileSource(path)
  try {
    return await source.read(entry.dataOffset, entry.size)
  } finally {
    source.close()
  }
}

function byName(entries: TarEntry[]): Map<string, TarEntry> {
  return new Map(entries.map((entry) => [entry.name, entry]))
}

// ---------------------------------------------------------------------------------------------------------
// Synthetic header construction (independent of the code under test).

interface HeaderSpec {
  name: string
  typeflag?: string
  size?: number
  /** Raw 12-byte size field, e.g. base-256; overrides `size`. */
  sizeField?: Buffer
  linkname?: string
  mode?: number
  mtime?: number
  prefix?: string
  /** 'ustar' (POSIX, default), 'gnu' or 'v7'. */
  format?: 'ustar' | 'gnu' | 'v7'
  signedChecksum?: boolean
}

function writeOctal(block: Buffer, offset: number, width: number, value: number): void {
  block.write(value.toString(8).padStart(width - 1, '0') + '\0', offset, width, 'latin1')
}

function header(spec: HeaderSpec): Buffer {
  const block = Buffer.alloc(512)
  block.write(spec.name, 0, 100, 'utf8')
  writeOctal(block, 100, 8, spec.mode ?? 0o644)
  writeOctal(block, 108, 8, 1000)
  writeOctal(block, 116, 8, 1000)
  if (spec.sizeField) spec.sizeField.copy(block, 124)
  else writeOctal(block, 124, 12, spec.size ?? 0)
  writeOctal(block, 136, 12, spec.mtime ?? 1_700_000_000)
  block.write(spec.typeflag ?? '0', 156, 1, 'latin1')
  block.write(spec.linkname ?? '', 157, 100, 'utf8')
  const format = spec.format ?? 'ustar'
  if (format === 'ustar') block.write('ustar\x0000', 257, 8, 'latin1')
  if (format === 'gnu') block.write('ustar  \0', 257, 8, 'latin1')
  if (spec.prefix) block.write(spec.prefix, 345, 155, 'utf8')
  setChecksum(block, spec.signedChecksum ?? false)
  return block
}

function setChecksum(block: Buffer, signed: boolean): void {
  block.fill(0x20, 148, 156)
  let sum = 0
  for (const byte of block) sum += signed && byte >= 0x80 ? byte - 256 : byte
  block.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1')
}

function base256(value: bigint, width = 12): Buffer {
  const field = Buffer.alloc(width)
  for (let i = width - 1; i >= 0; i--) {
    field[i] = Number(value & 0xffn)
    value >>= 8n
  }
  field[0]! |= 0x80
  return field
}

function pad(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)])
}

/** A PAX payload with correct self-counting length prefixes. */
function paxData(records: Record<string, string>): Buffer {
  const parts = Object.entries(records).map(([key, value]) => {
    const body = ` ${key}=${value}\n`
    let length = Buffer.byteLength(body) + 1
    while (String(length).length + Buffer.byteLength(body) !== length) length++
    return `${length}${body}`
  })
  return Buffer.from(parts.join(''), 'utf8')
}

function member(spec: HeaderSpec, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([header({ ...spec, size: spec.size ?? data.length }), pad(data)])
}

function paxMember(typeflag: 'x' | 'g', payload: Buffer): Buffer {
  return member({ name: 'PaxHeader', typeflag }, payload)
}

const END = Buffer.alloc(1024)

function tar(...parts: Buffer[]): SyntheticSource {
  return new SyntheticSource(Buffer.concat(parts))
}

async function expectTarError(source: RangeSource, pattern: RegExp): Promise<void> {
  const error = await walkTar(source).then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(TarFormatError)
  expect((error as Error).name).toBe('TarFormatError')
  expect((error as Error).message).toMatch(pattern)
}

// ---------------------------------------------------------------------------------------------------------

describe('normaliseEntryPath', () => {
  it.each([
    ['a', 'a'],
    ['./a', 'a'],
    ['././a/b', 'a/b'],
    ['a//b///c', 'a/b/c'],
    ['a/./b/.', 'a/b'],
    ['dir/', 'dir'],
    ['./dir/sub/', 'dir/sub'],
    ['.hidden/..dots/x..', '.hidden/..dots/x..'],
    ['./', ''],
    ['.', ''],
  ])('%j → %j', (raw, expected) => {
    expect(normaliseEntryPath(raw)).toBe(expected)
  })

  it.each(['', '/etc/passwd', '/', '../evil', 'a/../../b', 'a/..', 'a/../b', './..', 'a\0b'])('rejects %j', (raw) => {
    expect(() => normaliseEntryPath(raw)).toThrow(TarFormatError)
  })
})

describe('parseHeaderBlock', () => {
  it('returns null for an all-zero block', () => {
    expect(parseHeaderBlock(Buffer.alloc(512))).toBeNull()
  })

  it('rejects a block of the wrong size', () => {
    expect(() => parseHeaderBlock(Buffer.alloc(511))).toThrow(TarFormatError)
  })

  it('parses ustar fields including the prefix', () => {
    const parsed = parseHeaderBlock(header({ name: 'model.bin', prefix: 'deep/dir', size: 1234, mode: 0o100640, linkname: '' }))
    expect(parsed).toEqual({
      name: 'model.bin',
      mode: 0o100640,
      uid: 1000,
      gid: 1000,
      size: 1234,
      mtime: 1_700_000_000,
      typeflag: '0',
      linkname: '',
      magic: 'ustar',
      prefix: 'deep/dir',
    })
  })

  it('ignores the prefix area of GNU and v7 headers', () => {
    // GNU stores atime/ctime where ustar keeps the prefix; reading it as a path would corrupt names.
    const gnu = parseHeaderBlock(header({ name: 'f', prefix: 'junk', format: 'gnu' }))
    expect(gnu?.magic).toBe('ustar ')
    expect(gnu?.prefix).toBe('')
    const v7 = parseHeaderBlock(header({ name: 'f', prefix: 'junk', format: 'v7' }))
    expect(v7?.magic).toBe('')
    expect(v7?.prefix).toBe('')
  })

  it('accepts octal fields padded with leading spaces and terminated by space or NUL', () => {
    const block = header({ name: 'f' })
    block.write('   1750 \0\0\0\0', 124, 12, 'latin1') // size
    block.write('644 \0\0\0\0', 100, 8, 'latin1') // mode, space-terminated
    block.write('\0\0\0\0\0\0\0\0', 108, 8, 'latin1') // uid, empty
    setChecksum(block, false)
    const parsed = parseHeaderBlock(block)
    expect(parsed?.size).toBe(0o1750)
    expect(parsed?.mode).toBe(0o644)
    expect(parsed?.uid).toBe(0)
  })

  it('accepts a full-width 12-digit octal size with no terminator', () => {
    const block = header({ name: 'f' })
    block.write('777777777777', 124, 12, 'latin1')
    setChecksum(block, false)
    expect(parseHeaderBlock(block)?.size).toBe(0o777777777777)
  })

  it('rejects non-octal digits', () => {
    const block = header({ name: 'f' })
    block.write('00000000009\0', 124, 12, 'latin1')
    setChecksum(block, false)
    expect(() => parseHeaderBlock(block)).toThrow(/octal size/)
  })

  it('decodes base-256 sizes exactly up to MAX_SAFE_INTEGER and rejects larger ones', () => {
    const max = header({ name: 'f', sizeField: base256(BigInt(Number.MAX_SAFE_INTEGER)) })
    expect(parseHeaderBlock(max)?.size).toBe(Number.MAX_SAFE_INTEGER)
    const tooBig = header({ name: 'f', sizeField: base256(BigInt(Number.MAX_SAFE_INTEGER) + 1n) })
    expect(() => parseHeaderBlock(tooBig)).toThrow(TarFormatError)
  })

  it('decodes base-256 uid/gid/mtime, including a negative mtime', () => {
    const block = header({ name: 'f' })
    base256(123_456_789n, 8).copy(block, 108) // uid beyond 7 octal digits
    base256(2_097_152n, 8).copy(block, 116) // gid 0o10000000
    Buffer.alloc(12, 0xff).copy(block, 136) // mtime -1 in two's complement
    setChecksum(block, false)
    const parsed = parseHeaderBlock(block)
    expect(parsed?.uid).toBe(123_456_789)
    expect(parsed?.gid).toBe(2_097_152)
    expect(parsed?.mtime).toBe(-1)
  })

  it('accepts the signed checksum variant', () => {
    const signed = header({ name: 'modèle-é.bin', signedChecksum: true })
    expect(parseHeaderBlock(signed)?.name).toBe('modèle-é.bin')
    const unsigned = header({ name: 'modèle-é.bin' })
    expect(parseHeaderBlock(unsigned)?.name).toBe('modèle-é.bin')
  })

  it('rejects a bad checksum', () => {
    const block = header({ name: 'f' })
    block[0] = 'g'.charCodeAt(0)
    expect(() => parseHeaderBlock(block)).toThrow(/checksum/)
  })
})

// ---------------------------------------------------------------------------------------------------------

describe('walkTar on archives written by GNU tar', () => {
  let dir: string
  let src: string
  const longDir = `model/${'a'.repeat(60)}/${'b'.repeat(60)}`
  const longFile = `${longDir}/tokenizer-with-a-long-name.json`
  const files: Record<string, Buffer> = {
    'model/config.json': Buffer.from('{"architecture":"llama"}\n'),
    'model/weights/shard-00001.bin': randomBytes(3000),
    'model/weights/empty.bin': Buffer.alloc(0),
    [longFile]: randomBytes(700),
    'a-original.txt': Buffer.from('hard linked\n'),
  }
  const MTIME = 1_700_000_000

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'cnaifs-tar-'))
    src = join(dir, 'src')
    for (const [path, data] of Object.entries(files)) {
      mkdirSync(join(src, path, '..'), { recursive: true })
      writeFileSync(join(src, path), data)
    }
    chmodSync(join(src, 'model/config.json'), 0o640)
    mkdirSync(join(src, 'empty-dir'))
    symlinkSync('model/config.json', join(src, 'link-to-config'))
    linkSync(join(src, 'a-original.txt'), join(src, 'z-hardlink.txt'))
    execFileSync('find', [src, '-exec', 'touch', '-h', '-d', `@${MTIME}`, '{}', '+'])
    expect(longFile.length).toBeGreaterThan(100)
  })

  afterAll(() => {
    rmSync(dir, { recursive: true, force: true })
  })

  function makeTar(format: string, extra: string[] = [], tag = '', members = ['.']): string {
    const out = join(dir, `${format}${tag}.tar`)
    execFileSync('tar', [`--format=${format}`, '--sort=name', '--owner=1234', '--group=5678', '--numeric-owner', ...extra, '-C', src, '-cf', out, ...members])
    return out
  }

  async function checkArchive(path: string): Promise<Map<string, TarEntry>> {
    const { entries, source } = await walkFile(path)
    const named = byName(entries)
    const expectedNames = [
      ...Object.keys(files),
      'z-hardlink.txt',
      'link-to-config',
      'empty-dir',
      'model',
      'model/weights',
      `model/${'a'.repeat(60)}`,
      longDir,
    ]
    expect([...named.keys()].sort()).toEqual(expectedNames.sort())
    expect(entries).toHaveLength(expectedNames.length) // no duplicates, root './' skipped

    for (const [name, data] of Object.entries(files)) {
      const entry = named.get(name)!
      expect(entry.type, name).toBe('file')
      expect(entry.size, name).toBe(data.length)
      expect(entry.dataOffset % 512, name).toBe(0)
      expect((await readData(path, entry)).equals(data), `bytes of ${name}`).toBe(true)
      expect(entry.uid).toBe(1234)
      expect(entry.gid).toBe(5678)
    }
    expect(named.get('model/config.json')!.mode).toBe(0o640)
    expect(named.get('model/weights')).toMatchObject({ type: 'directory', size: 0 })
    expect(named.get('empty-dir')).toMatchObject({ type: 'directory', size: 0 })
    expect(named.get('link-to-config')).toMatchObject({ type: 'symlink', size: 0, linkname: 'model/config.json' })
    expect(named.get('z-hardlink.txt')).toMatchObject({ type: 'hardlink', size: 0, linkname: 'a-original.txt' })
    for (const entry of entries) expect(Math.floor(entry.mtime)).toBe(MTIME)

    // The whole archive is far below the 64 KiB read-ahead: one read, headers only.
    expect(source.size).toBeLessThan(64 * 1024)
    expect(source.reads).toBe(1)
    expect(source.calls[0]).toEqual([0, source.size])
    return named
  }

  it('lists a ustar archive (long path split into prefix + name)', async () => {
    const path = makeTar('ustar')
    // Sanity: GNU tar really used the prefix field rather than a GNU long name.
    const raw = readFileSync(path)
    expect(raw.includes(Buffer.from('././@LongLink'))).toBe(false)
    await checkArchive(path)
  })

  it('lists a pax archive (long path in a PAX path record, fractional mtime)', async () => {
    utimesSync(join(src, 'model/config.json'), MTIME, MTIME + 0.25)
    try {
      const named = await checkArchive(makeTar('pax'))
      expect(named.get('model/config.json')!.mtime).toBe(MTIME + 0.25)
    } finally {
      utimesSync(join(src, 'model/config.json'), MTIME, MTIME)
    }
  })

  it('lists a GNU archive (long path via ././@LongLink)', async () => {
    const path = makeTar('gnu')
    expect(readFileSync(path).includes(Buffer.from('././@LongLink'))).toBe(true)
    await checkArchive(path)
  })

  it('lists a GNU archive with a long symlink target and hard-link target (typeflag K)', async () => {
    const longTarget = `${longDir}/tokenizer-with-a-long-name.json`
    const symlinkPath = join(src, 'long-link')
    const hardlinkPath = join(src, `${longDir}/zz-hard`)
    symlinkSync(longTarget, symlinkPath)
    linkSync(join(src, longFile), hardlinkPath)
    lutimesSync(symlinkPath, MTIME, MTIME)
    try {
      const { entries } = await walkFile(makeTar('gnu', [], '-long-links'))
      const named = byName(entries)
      expect(named.get('long-link')).toMatchObject({ type: 'symlink', linkname: longTarget })
      expect(named.get(`${longDir}/zz-hard`)).toMatchObject({ type: 'hardlink', linkname: longFile })
    } finally {
      rmSync(symlinkPath)
      rmSync(hardlinkPath)
    }
  })

  it('lists a v7 archive', async () => {
    // v7 has no way to store names over 99 bytes, so archive only the short ones.
    const { entries } = await walkFile(makeTar('v7', [], '', ['model/config.json', 'model/weights', 'link-to-config']))
    const named = byName(entries)
    expect(named.get('model/config.json')).toMatchObject({ type: 'file', size: files['model/config.json']!.length })
    expect(named.get('model/weights')?.type).toBe('directory')
    expect(named.get('link-to-config')).toMatchObject({ type: 'symlink', linkname: 'model/config.json' })
  })

  it.each(['gnu', 'pax'])('skips sparse members (%s) and keeps later offsets exact', async (format) => {
    const sparsePath = join(src, 'model/sparse.bin')
    // Ten data islands: more than the four map slots of an old GNU header, forcing an extension block.
    execFileSync('python3', ['-c', `f=open(${JSON.stringify(sparsePath)},'wb')\nfor i in range(10):\n  f.seek(i*65536); f.write(b'x'*100)\nf.truncate(1<<20)`])
    try {
      const path = makeTar(format, ['--sparse'], '-sparse')
      const { entries } = await walkFile(path)
      const named = byName(entries)
      // PAX sparse 1.0 stores the member under a ./GNUSparseFile.<pid>/ alias, so check every name.
      expect(entries.filter((e) => /sparse/i.test(e.name))).toEqual([])
      expect(named.has('model')).toBe(true)
      const shard = named.get('model/weights/shard-00001.bin')!
      expect((await readData(path, shard)).equals(files['model/weights/shard-00001.bin']!)).toBe(true)
    } finally {
      rmSync(sparsePath)
    }
  })

  it('reads only the head and the tail of a tar holding one 1 MiB file', async () => {
    const bigDir = join(dir, 'big')
    mkdirSync(bigDir)
    const data = randomBytes(1024 * 1024)
    writeFileSync(join(bigDir, 'weights.safetensors'), data)
    const path = join(dir, 'big.tar')
    execFileSync('tar', ['--format=gnu', '-C', bigDir, '-cf', path, 'weights.safetensors'])

    const { entries, source } = await walkFile(path, { readAheadBytes: 64 * 1024 })
    expect(entries).toHaveLength(1)
    expect(entries[0]).toMatchObject({ name: 'weights.safetensors', type: 'file', size: data.length, dataOffset: 512 })
    expect(source.reads).toBe(2)
    expect(source.calls[0]).toEqual([0, 64 * 1024])
    expect(source.calls[1]![0]).toBe(512 + data.length) // aligned to the next header
    expect(source.bytesRead).toBeLessThan(100 * 1024) // never downloads the body
    expect((await readData(path, entries[0]!)).equals(data)).toBe(true)
  })
})

// ---------------------------------------------------------------------------------------------------------

describe('walkTar on synthetic archives', () => {
  const NINE_GIB = 9 * 1024 ** 3

  it('handles a 9 GiB file whose size is base-256 encoded, reading only head and tail', async () => {
    const head = header({ name: 'model-00001-of-00002.safetensors', sizeField: base256(BigInt(NINE_GIB)) })
    const source = new SyntheticSource(head, 512 + NINE_GIB + 1024)
    const entries = await walkTar(source)
    expect(entries).toEqual([
      { name: 'model-00001-of-00002.safetensors', type: 'file', size: NINE_GIB, dataOffset: 512, mode: 0o644, uid: 1000, gid: 1000, mtime: 1_700_000_000 },
    ])
    expect(source.reads).toBe(2)
    expect(source.calls[1]).toEqual([512 + NINE_GIB, 1024])
  })

  it('handles a 9 GiB file whose size is in a PAX size record', async () => {
    const pax = paxMember('x', paxData({ size: String(NINE_GIB), path: 'weights/big.bin' }))
    const head = Buffer.concat([pax, header({ name: 'ignored-short-name', size: 0 })])
    const source = new SyntheticSource(head, head.length + NINE_GIB + 1024)
    const entries = await walkTar(source)
    expect(entries).toHaveLength(1)
    expect(entries[0]).toMatchObject({ name: 'weights/big.bin', type: 'file', size: NINE_GIB, dataOffset: head.length })
  })

  it('applies PAX linkpath/uid/gid/mtime overrides to the next entry only', async () => {
    const source = tar(
      paxMember('x', paxData({ linkpath: './target//file', uid: '4000000000', gid: '7', mtime: '1700000000.123456789' })),
      member({ name: 'hl', typeflag: '1', linkname: 'short' }),
      member({ name: 'plain' }, Buffer.from('x')),
      END,
    )
    const [hl, plain] = await walkTar(source)
    expect(hl).toMatchObject({ name: 'hl', type: 'hardlink', linkname: 'target/file', uid: 4_000_000_000, gid: 7, mtime: 1700000000.123456789 })
    expect(plain).toMatchObject({ name: 'plain', uid: 1000, gid: 1000, mtime: 1_700_000_000 })
  })

  it('skips PAX global headers without applying them', async () => {
    const source = tar(paxMember('g', paxData({ comment: 'git commit', path: 'global-name' })), member({ name: 'file' }, Buffer.from('abc')), END)
    const entries = await walkTar(source)
    expect(entries.map((e) => e.name)).toEqual(['file'])
    expect(entries[0]!.dataOffset).toBe(512 * 3)
  })

  it('treats a v7 regular-file header whose name ends in / as a directory', async () => {
    const entries = await walkTar(tar(member({ name: 'olddir/', typeflag: '\0', format: 'v7' }), member({ name: 'olddir/f', typeflag: '\0', format: 'v7' }, Buffer.from('v7')), END))
    expect(entries.map((e) => [e.name, e.type])).toEqual([
      ['olddir', 'directory'],
      ['olddir/f', 'file'],
    ])
  })

  it('treats typeflag 7 (contiguous) as a file', async () => {
    const entries = await walkTar(tar(member({ name: 'c', typeflag: '7' }, Buffer.from('data')), END))
    expect(entries[0]).toMatchObject({ name: 'c', type: 'file', size: 4 })
  })

  it('skips devices, FIFOs and unknown types, stepping over any data they carry', async () => {
    const source = tar(
      member({ name: 'dev/null', typeflag: '3', size: 0 }),
      header({ name: 'fifo', typeflag: '6', size: 99999 }), // no data records for FIFOs, whatever size says
      member({ name: 'volume', typeflag: 'V' }, Buffer.alloc(700, 1)),
      member({ name: 'after' }, Buffer.from('payload')),
      END,
    )
    const entries = await walkTar(source)
    expect(entries.map((e) => e.name)).toEqual(['after'])
    expect(entries[0]!.dataOffset).toBe(512 * 6)
    expect((await source.read(entries[0]!.dataOffset, 7)).toString()).toBe('payload')
  })

  it('returns duplicate names in archive order', async () => {
    const entries = await walkTar(tar(member({ name: 'dup' }, Buffer.from('one')), member({ name: './dup' }, Buffer.from('two!')), END))
    expect(entries.map((e) => [e.name, e.size])).toEqual([
      ['dup', 3],
      ['dup', 4],
    ])
  })

  it('skips the root directory entry but rejects a root that is not a directory', async () => {
    expect(await walkTar(tar(member({ name: './', typeflag: '5' }), END))).toEqual([])
    await expectTarError(tar(member({ name: '.', typeflag: '0' }), END), /archive root/)
  })

  it('accepts a single zero block followed by the end of the blob', async () => {
    const entries = await walkTar(tar(member({ name: 'f' }, Buffer.from('x')), Buffer.alloc(512)))
    expect(entries.map((e) => e.name)).toEqual(['f'])
  })

  it('accepts a blob ending exactly at a header boundary', async () => {
    const entries = await walkTar(tar(member({ name: 'f' }, Buffer.from('x'))))
    expect(entries.map((e) => e.name)).toEqual(['f'])
  })

  it('stops at two zero blocks, ignoring whatever follows', async () => {
    const entries = await walkTar(tar(member({ name: 'f' }), END, member({ name: 'hidden' })))
    expect(entries.map((e) => e.name)).toEqual(['f'])
  })

  it('rejects a lone zero block followed by another header', async () => {
    await expectTarError(tar(member({ name: 'f' }), Buffer.alloc(512), member({ name: 'g' }), END), /lone zero block at offset 512/)
  })

  it('never reads past the end of the blob and issues reads aligned to headers', async () => {
    const parts = Array.from({ length: 8 }, (_, i) => member({ name: `f${i}` }, Buffer.alloc(1000, i)))
    const source = tar(...parts, END)
    const entries = await walkTar(source, { readAheadBytes: 2048 })
    expect(entries).toHaveLength(8)
    for (const [offset, length] of source.calls) {
      expect(offset % 512).toBe(0)
      expect(offset + length).toBeLessThanOrEqual(source.size)
    }
    expect(source.reads).toBeGreaterThan(1)
  })
})

// ---------------------------------------------------------------------------------------------------------

describe('walkTar rejects hostile archives', () => {
  it.each([
    ['../evil', /'\.\.'.*offset 0|offset 0.*'\.\.'/],
    ['/etc/passwd', /absolute/],
    ['a/../../b', /'\.\.'/],
  ])('rejects the name %j', async (name, pattern) => {
    await expectTarError(tar(member({ name }, Buffer.from('pwned')), END), pattern)
  })

  it('names the entry and offset in the error', async () => {
    await expectTarError(tar(member({ name: 'ok' }), member({ name: '../evil' }), END), /entry "\.\.\/evil" \(header at offset 512\)/)
  })

  it('rejects a ustar prefix that smuggles a .. component', async () => {
    await expectTarError(tar(member({ name: 'x', prefix: '..' }), END), /'\.\.'/)
  })

  it('rejects .. in a PAX path and in a GNU long name', async () => {
    await expectTarError(tar(paxMember('x', paxData({ path: 'ok/../../x' })), member({ name: 'ok' }), END), /'\.\.'/)
    await expectTarError(tar(member({ name: '././@LongLink', typeflag: 'L', format: 'gnu' }, Buffer.from('../x\0')), member({ name: 'ok', format: 'gnu' }), END), /'\.\.'/)
  })

  it('rejects a hard link to ../x', async () => {
    await expectTarError(tar(member({ name: 'hl', typeflag: '1', linkname: '../x' }), END), /hard-link target.*'\.\.'/)
  })

  it('rejects an absolute hard-link target and an empty symlink target', async () => {
    await expectTarError(tar(member({ name: 'hl', typeflag: '1', linkname: '/etc/shadow' }), END), /absolute/)
    await expectTarError(tar(member({ name: 'sl', typeflag: '2', linkname: '' }), END), /empty target/)
  })

  it('keeps symlink targets as written, even ones pointing outside', async () => {
    const entries = await walkTar(tar(member({ name: 'sl', typeflag: '2', linkname: '../../etc/passwd' }), END))
    expect(entries[0]).toMatchObject({ type: 'symlink', linkname: '../../etc/passwd' })
  })

  it('rejects an empty name', async () => {
    await expectTarError(tar(member({ name: '' }, Buffer.from('x')), END), /empty path/)
  })

  it('rejects a truncated header', async () => {
    const whole = Buffer.concat([member({ name: 'a' }, Buffer.from('aaa')), member({ name: 'b' })])
    await expectTarError(new SyntheticSource(whole.subarray(0, 1024 + 200)), /truncated.*offset 1024/)
  })

  it('rejects a data size that runs past the blob', async () => {
    await expectTarError(tar(header({ name: 'big', size: 10_000 }), Buffer.alloc(1024)), /entry "big".*runs past the end/)
  })

  it('rejects a base-256 size that runs past the blob without reading it', async () => {
    const source = new SyntheticSource(header({ name: 'huge', sizeField: base256(BigInt(Number.MAX_SAFE_INTEGER)) }), 4096)
    await expectTarError(source, /runs past the end/)
    expect(source.reads).toBe(1)
  })

  it('rejects a bad checksum, naming the header offset', async () => {
    const bad = member({ name: 'b' })
    bad[0] = 'c'.charCodeAt(0)
    await expectTarError(tar(member({ name: 'a' }, Buffer.from('x')), bad, END), /offset 1024.*checksum/)
  })

  it.each([
    ['a length that overruns the data', Buffer.from('99 path=x\n')],
    ['a non-numeric length', Buffer.from('abc path=x\n')],
    ['a length that misses the newline', Buffer.from('9 path=xy\n')],
    ['a record without =', Buffer.from('9 pathxx\n')],
    ['a zero length', Buffer.from('0 path=x\n')],
  ])('rejects a PAX record with %s', async (_, payload) => {
    await expectTarError(tar(paxMember('x', payload), member({ name: 'f' }), END), /PAX.*malformed/)
  })

  it('rejects invalid PAX numbers', async () => {
    await expectTarError(tar(paxMember('x', paxData({ size: '-5' })), member({ name: 'f' }), END), /invalid PAX size/)
    await expectTarError(tar(paxMember('x', paxData({ size: '9007199254740993' })), member({ name: 'f' }), END), /invalid PAX size/)
  })

  it('rejects an extended header with no following entry', async () => {
    await expectTarError(tar(paxMember('x', paxData({ path: 'x' })), END), /extended header/)
  })

  it('rejects an oversized extended header', async () => {
    await expectTarError(new SyntheticSource(header({ name: 'PaxHeader', typeflag: 'x', size: 50 * 1024 * 1024 }), 60 * 1024 * 1024), /limit/)
  })

  it('rejects more than maxEntries entries', async () => {
    const source = tar(member({ name: 'a' }), member({ name: 'b' }), member({ name: 'c' }), END)
    await expect(walkTar(source, { maxEntries: 3 })).resolves.toHaveLength(3)
    await expect(walkTar(source, { maxEntries: 2 })).rejects.toThrow(/more than 2 entries/)
  })
})
