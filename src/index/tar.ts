/**
 * Tar header walker: lists the members of a tar layer by reading only its headers with ranged reads,
 * so a multi-gigabyte weight layer can be indexed without downloading any file body.
 *
 * Supported: v7, ustar (prefix + name), PAX extended headers ('x'), GNU long names/links ('L'/'K') and
 * GNU base-256 numeric fields. The input is untrusted (it comes from a registry), so every structural
 * problem is a TarFormatError naming the entry and header offset rather than a silent skip.
 *
 * Decisions:
 * - PAX global headers ('g') are skipped (their data is stepped over). The only common producer is
 *   `git archive` (a `comment` key); applying a global `path`/`size` would be meaningless, and global
 *   ownership/mtime only changes cosmetic metadata of a read-only mount.
 * - Duplicate names are all returned in archive order; under tar semantics the later one wins, and the
 *   caller decides how to apply that.
 * - Hard-link targets are normalised and validated like names but not resolved: whether they point at an
 *   earlier member is for the caller to check.
 * - GNU sparse members (old 'S' and PAX `GNU.sparse.*`) are skipped: their data is a sparse map plus
 *   fragments, not the file's bytes, so they cannot be served by a plain range read.
 * - Types with no data records (links, devices, directories, FIFOs) advance past the header only,
 *   whatever their size field says, as POSIX specifies (and Go's archive/tar does).
 * - maxEntries counts every member header, including skipped types, because it bounds work as well as
 *   output size.
 */

/** A random-access byte source: a registry blob read with HTTP range requests, or a local file in tests. */
export interface RangeSource {
  readonly size: number
  /** Reads exactly `length` bytes at `offset` (callers never ask past `size`). */
  read(offset: number, length: number): Promise<Buffer>
}

export type TarEntryType = 'file' | 'directory' | 'symlink' | 'hardlink'

export interface TarEntry {
  /** Normalised path relative to the archive root: no leading './', no trailing '/', never empty. */
  name: string
  type: TarEntryType
  /** Data size (0 for non-files). */
  size: number
  /** Byte offset of the data inside the blob. */
  dataOffset: number
  /** Permission bits only (& 0o7777). */
  mode: number
  uid: number
  gid: number
  /** Seconds since epoch (may be fractional from PAX). */
  mtime: number
  /** Symlink target (as written) or hard-link target (normalised like name). */
  linkname?: string
}

export class TarFormatError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'TarFormatError'
  }
}

export interface WalkTarOptions {
  /** Bytes fetched per read; headers inside that window are served without another read. Default 64 KiB. */
  readAheadBytes?: number
  /** Maximum number of member headers before the archive is rejected. Default 100000. */
  maxEntries?: number
  /** Bytes of the blob already fetched (a layer's head and tail, read in one request): served before any read. */
  prefetched?: Array<{ offset: number; bytes: Buffer }>
}

export interface RawTarHeader {
  name: string
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number
  typeflag: string
  linkname: string
  /** The 6-byte magic without trailing NULs: 'ustar' (POSIX), 'ustar ' (GNU) or '' (v7). */
  magic: string
  /** ustar name prefix; '' for GNU and v7 headers, which use those bytes for other fields. */
  prefix: string
}

const BLOCK_SIZE = 512
const DEFAULT_READ_AHEAD = 64 * 1024
const DEFAULT_MAX_ENTRIES = 100_000
/** PAX and GNU long-name payloads are small; a cap stops a hostile header from forcing a huge buffer. */
const MAX_METADATA_BYTES = 1024 * 1024
/** Real archives put at most a couple of extension headers before a member; more is a work-amplification attack. */
const MAX_EXTENSION_HEADERS_PER_ENTRY = 16

const FIELD = {
  name: [0, 100],
  mode: [100, 108],
  uid: [108, 116],
  gid: [116, 124],
  size: [124, 136],
  mtime: [136, 148],
  chksum: [148, 156],
  typeflag: [156, 157],
  linkname: [157, 257],
  magic: [257, 263],
  prefix: [345, 500],
} as const satisfies Record<string, readonly [number, number]>

/** Old GNU sparse headers: flag saying extension blocks follow the header, and the same flag inside each one. */
const GNU_SPARSE_IS_EXTENDED = 482
const GNU_SPARSE_EXT_IS_EXTENDED = 504

const FILE_TYPES = new Set(['0', '\0', '7'])
/** Types that never carry data records, whatever their size field says. */
const HEADER_ONLY_TYPES = new Set(['1', '2', '3', '4', '5', '6'])
const EXTENSION_TYPES = new Set(['x', 'g', 'L', 'K'])

// ---------------------------------------------------------------------------------------------------------
// Paths

/**
 * Normalises an entry path, throwing TarFormatError for absolute paths or '..' components.
 * Strips './' and '.' segments, collapses repeated '/', removes a trailing '/'. Returns '' for the
 * archive root itself ('.', './'), which the walker skips.
 */
export function normaliseEntryPath(raw: string): string {
  if (raw === '') throw new TarFormatError('empty path')
  if (raw.includes('\0')) throw new TarFormatError(`path ${JSON.stringify(raw)} contains a NUL byte`)
  if (raw.startsWith('/')) throw new TarFormatError(`absolute path ${JSON.stringify(raw)}`)
  const segments = raw.split('/').filter((segment) => segment !== '' && segment !== '.')
  if (segments.includes('..')) throw new TarFormatError(`path ${JSON.stringify(raw)} contains a '..' component`)
  return segments.join('/')
}

// ---------------------------------------------------------------------------------------------------------
// Header block parsing

function field(block: Buffer, [start, end]: readonly [number, number]): Buffer {
  return block.subarray(start, end)
}

/** Text fields end at the first NUL (or fill the field). Names are UTF-8 in practice (and in PAX). */
function parseString(bytes: Buffer): string {
  const nul = bytes.indexOf(0)
  return bytes.toString('utf8', 0, nul === -1 ? bytes.length : nul)
}

function parseOctal(bytes: Buffer, fieldName: string): number {
  // Writers pad with leading spaces or zeros and terminate with a space and/or NUL (or nothing when full).
  const text = parseString(bytes).trim()
  if (text === '') return 0
  if (!/^[0-7]+$/.test(text)) throw new TarFormatError(`invalid octal ${fieldName} field ${JSON.stringify(text)}`)
  // At most 12 octal digits (36 bits), so a plain number is exact.
  return parseInt(text, 8)
}

/** GNU base-256: high bit of the first byte set; 0xff as first byte means a negative two's-complement value. */
function parseBase256(bytes: Buffer, fieldName: string): number {
  let value = 0n
  for (const byte of bytes) value = (value << 8n) | BigInt(byte)
  if (bytes[0] === 0xff) value -= 1n << BigInt(bytes.length * 8)
  else value &= (1n << BigInt(bytes.length * 8 - 1)) - 1n
  if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new TarFormatError(`${fieldName} ${value} exceeds the safe integer range`)
  }
  return Number(value)
}

function parseNumeric(bytes: Buffer, fieldName: string): number {
  return (bytes[0]! & 0x80) !== 0 ? parseBase256(bytes, fieldName) : parseOctal(bytes, fieldName)
}

function parseNonNegative(bytes: Buffer, fieldName: string): number {
  const value = parseNumeric(bytes, fieldName)
  if (value < 0) throw new TarFormatError(`negative ${fieldName} ${value}`)
  return value
}

/** Accepts the POSIX unsigned sum and the signed-byte sum some historic tars wrote. */
function verifyChecksum(block: Buffer): void {
  const stored = parseOctal(field(block, FIELD.chksum), 'checksum')
  let unsigned = 0
  let signed = 0
  for (let i = 0; i < BLOCK_SIZE; i++) {
    const byte = i >= FIELD.chksum[0] && i < FIELD.chksum[1] ? 0x20 : block[i]!
    unsigned += byte
    signed += byte >= 0x80 ? byte - 0x100 : byte
  }
  if (stored !== unsigned && stored !== signed) {
    throw new TarFormatError(`bad header checksum (stored ${stored}, computed ${unsigned})`)
  }
}

function isZeroBlock(block: Buffer): boolean {
  for (const byte of block) if (byte !== 0) return false
  return true
}

/** Parses one 512-byte header block (exported for unit tests). Returns null for an all-zero block. */
export function parseHeaderBlock(block: Buffer): RawTarHeader | null {
  if (block.length !== BLOCK_SIZE) throw new TarFormatError(`header block is ${block.length} bytes, not ${BLOCK_SIZE}`)
  if (isZeroBlock(block)) return null
  verifyChecksum(block)
  const magic = parseString(field(block, FIELD.magic))
  return {
    name: parseString(field(block, FIELD.name)),
    mode: parseNonNegative(field(block, FIELD.mode), 'mode'),
    uid: parseNonNegative(field(block, FIELD.uid), 'uid'),
    gid: parseNonNegative(field(block, FIELD.gid), 'gid'),
    size: parseNonNegative(field(block, FIELD.size), 'size'),
    mtime: parseNumeric(field(block, FIELD.mtime), 'mtime'),
    typeflag: String.fromCharCode(block[FIELD.typeflag[0]]!),
    linkname: parseString(field(block, FIELD.linkname)),
    magic,
    // GNU headers reuse the prefix bytes for atime/ctime/sparse data, so only POSIX ustar has a prefix.
    prefix: magic === 'ustar' ? parseString(field(block, FIELD.prefix)) : '',
  }
}

// ---------------------------------------------------------------------------------------------------------
// PAX records

/** Parses "<len> <key>=<value>\n" records; `len` counts the whole record in bytes. */
function parsePaxRecords(data: Buffer): Map<string, string> {
  const records = new Map<string, string>()
  let pos = 0
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos)
    const lengthText = space === -1 ? '' : data.toString('latin1', pos, space)
    if (!/^[1-9][0-9]{0,15}$/.test(lengthText)) {
      throw new TarFormatError(`malformed PAX record length at byte ${pos} of the extended header`)
    }
    const end = pos + Number(lengthText)
    if (end > data.length || end <= space + 1 || data[end - 1] !== 0x0a) {
      throw new TarFormatError(`malformed PAX record at byte ${pos}: length ${lengthText} does not end at a newline`)
    }
    const record = data.subarray(space + 1, end - 1)
    const equals = record.indexOf(0x3d)
    if (equals <= 0) throw new TarFormatError(`malformed PAX record at byte ${pos}: no key=value`)
    records.set(record.toString('utf8', 0, equals), record.toString('utf8', equals + 1))
    pos = end
  }
  return records
}

function paxInteger(value: string, key: string): number {
  const number = Number(value)
  if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(number)) {
    throw new TarFormatError(`invalid PAX ${key} ${JSON.stringify(value)}`)
  }
  return number
}

function paxTime(value: string): number {
  if (!/^-?[0-9]+(\.[0-9]+)?$/.test(value)) throw new TarFormatError(`invalid PAX mtime ${JSON.stringify(value)}`)
  return Number(value)
}

// ---------------------------------------------------------------------------------------------------------
// Reading

/**
 * Serves byte ranges from the prefetched windows or one read-ahead window, refilling the latter from the requested
 * offset when all of them miss.
 */
class ReadAheadReader {
  private window: Buffer = Buffer.alloc(0)
  private windowStart = 0

  constructor(
    private readonly source: RangeSource,
    private readonly readAheadBytes: number,
    private readonly prefetched: Array<{ offset: number; bytes: Buffer }> = [],
  ) {}

  /** Callers guarantee offset + length <= source.size. */
  async read(offset: number, length: number): Promise<Buffer> {
    for (const p of this.prefetched) {
      const at = offset - p.offset
      if (at >= 0 && at + length <= p.bytes.length) return p.bytes.subarray(at, at + length)
    }
    const start = offset - this.windowStart
    if (start >= 0 && start + length <= this.window.length) return this.window.subarray(start, start + length)
    const readLength = Math.min(Math.max(this.readAheadBytes, length), this.source.size - offset)
    const bytes = await this.source.read(offset, readLength)
    if (bytes.length !== readLength) {
      throw new Error(`short read from tar source: asked for ${readLength} bytes at ${offset}, got ${bytes.length}`)
    }
    this.window = bytes
    this.windowStart = offset
    return bytes.subarray(0, length)
  }
}

// ---------------------------------------------------------------------------------------------------------
// Walking

/** Extension-header state that applies to the next member. */
interface PendingExtensions {
  pax: Map<string, string>
  longName?: string
  longLink?: string
  count: number
}

function emptyExtensions(): PendingExtensions {
  return { pax: new Map(), count: 0 }
}

function paddedSize(size: number): number {
  return Math.ceil(size / BLOCK_SIZE) * BLOCK_SIZE
}

/** Re-throws TarFormatErrors with the entry/offset context the low-level parsers don't know. */
function withContext<T>(context: string, fn: () => T): T {
  try {
    return fn()
  } catch (error) {
    if (error instanceof TarFormatError) throw new TarFormatError(`${context}: ${error.message}`)
    throw error
  }
}

function at(offset: number, name?: string): string {
  return name === undefined ? `header at offset ${offset}` : `entry ${JSON.stringify(name)} (header at offset ${offset})`
}

class TarWalker {
  private readonly reader: ReadAheadReader
  private readonly maxEntries: number
  private readonly entries: TarEntry[] = []
  private pending = emptyExtensions()
  private members = 0

  constructor(
    private readonly source: RangeSource,
    options: WalkTarOptions,
  ) {
    const readAhead = options.readAheadBytes ?? DEFAULT_READ_AHEAD
    const maxEntries = options.maxEntries ?? DEFAULT_MAX_ENTRIES
    if (!Number.isSafeInteger(readAhead) || readAhead <= 0) throw new RangeError(`invalid readAheadBytes ${readAhead}`)
    if (!Number.isSafeInteger(maxEntries) || maxEntries < 0) throw new RangeError(`invalid maxEntries ${maxEntries}`)
    if (!Number.isSafeInteger(source.size) || source.size < 0) throw new RangeError(`invalid source size ${source.size}`)
    this.reader = new ReadAheadReader(source, readAhead, options.prefetched)
    this.maxEntries = maxEntries
  }

  async walk(): Promise<TarEntry[]> {
    let offset = 0
    while (offset !== this.source.size) {
      const block = await this.readHeaderBlock(offset)
      const header = withContext(at(offset), () => parseHeaderBlock(block))
      if (header === null) {
        await this.checkEndOfArchive(offset)
        break
      }
      offset = EXTENSION_TYPES.has(header.typeflag)
        ? await this.applyExtension(header, offset)
        : await this.addMember(header, block, offset)
    }
    if (this.pending.count > 0) throw new TarFormatError(`archive ends after an extended header with no entry`)
    return this.entries
  }

  private async readHeaderBlock(offset: number): Promise<Buffer> {
    if (this.source.size - offset < BLOCK_SIZE) {
      throw new TarFormatError(`truncated archive: ${at(offset)} needs ${BLOCK_SIZE} bytes but the blob is ${this.source.size} bytes`)
    }
    return this.reader.read(offset, BLOCK_SIZE)
  }

  /** A zero block ends the archive when followed by another zero block or by the end of the blob. */
  private async checkEndOfArchive(offset: number): Promise<void> {
    const next = offset + BLOCK_SIZE
    if (next === this.source.size) return
    const block = await this.readHeaderBlock(next)
    // A header after a lone zero block would be hidden from tools that stop there, so refuse rather than guess.
    if (!isZeroBlock(block)) throw new TarFormatError(`lone zero block at offset ${offset} followed by a non-zero block`)
  }

  private checkDataInBlob(dataOffset: number, size: number, context: string): void {
    if (dataOffset + size > this.source.size) {
      throw new TarFormatError(`${context}: data of ${size} bytes at offset ${dataOffset} runs past the end of the ${this.source.size}-byte blob`)
    }
  }

  private async applyExtension(header: RawTarHeader, offset: number): Promise<number> {
    const context = `${header.typeflag === 'x' || header.typeflag === 'g' ? 'PAX' : 'GNU long-name'} ${at(offset)}`
    const dataOffset = offset + BLOCK_SIZE
    if (header.size > MAX_METADATA_BYTES) throw new TarFormatError(`${context}: ${header.size} bytes exceeds the ${MAX_METADATA_BYTES}-byte limit`)
    this.checkDataInBlob(dataOffset, header.size, context)
    if (++this.pending.count > MAX_EXTENSION_HEADERS_PER_ENTRY) throw new TarFormatError(`${context}: too many consecutive extended headers`)
    const data = await this.reader.read(dataOffset, header.size)
    switch (header.typeflag) {
      case 'x':
        for (const [key, value] of withContext(context, () => parsePaxRecords(data))) this.pending.pax.set(key, value)
        break
      case 'L':
        this.pending.longName = parseString(data)
        break
      case 'K':
        this.pending.longLink = parseString(data)
        break
      // 'g': global headers are deliberately ignored (see the module comment).
    }
    return dataOffset + paddedSize(header.size)
  }

  private async addMember(header: RawTarHeader, block: Buffer, offset: number): Promise<number> {
    const pending = this.pending
    this.pending = emptyExtensions()
    if (++this.members > this.maxEntries) throw new TarFormatError(`${at(offset)}: more than ${this.maxEntries} entries`)

    const rawName = nonEmpty(pending.pax.get('path')) ?? pending.longName ?? joinPrefix(header)
    const context = at(offset, rawName)
    let dataOffset = offset + BLOCK_SIZE
    if (header.typeflag === 'S') dataOffset = await this.skipGnuSparseExtensions(block, dataOffset, context)
    const dataSize = HEADER_ONLY_TYPES.has(header.typeflag)
      ? 0
      : withContext(context, () => optional(pending.pax.get('size'), (v) => paxInteger(v, 'size')) ?? header.size)
    this.checkDataInBlob(dataOffset, dataSize, context)

    const isSparse = [...pending.pax.keys()].some((key) => key.startsWith('GNU.sparse.'))
    const type = isSparse ? undefined : entryType(header.typeflag, rawName)
    if (type !== undefined) {
      this.entries.push(...withContext(context, () => buildEntry(header, pending, rawName, type, dataOffset, dataSize)))
    }
    return dataOffset + paddedSize(dataSize)
  }

  /** Old GNU sparse members may be followed by extra sparse-map blocks before their data. */
  private async skipGnuSparseExtensions(header: Buffer, dataOffset: number, context: string): Promise<number> {
    let extended = header[GNU_SPARSE_IS_EXTENDED] !== 0
    while (extended) {
      this.checkDataInBlob(dataOffset, BLOCK_SIZE, `${context}: sparse extension block`)
      const block = await this.reader.read(dataOffset, BLOCK_SIZE)
      extended = block[GNU_SPARSE_EXT_IS_EXTENDED] !== 0
      dataOffset += BLOCK_SIZE
    }
    return dataOffset
  }
}

function nonEmpty(value: string | undefined): string | undefined {
  // An empty PAX value means "no override": fall back to the header field.
  return value === '' ? undefined : value
}

function optional<T>(value: string | undefined, parse: (value: string) => T): T | undefined {
  const present = nonEmpty(value)
  return present === undefined ? undefined : parse(present)
}

function joinPrefix(header: RawTarHeader): string {
  return header.prefix === '' ? header.name : `${header.prefix}/${header.name}`
}

function entryType(typeflag: string, rawName: string): TarEntryType | undefined {
  // v7 tars had no directory type: a regular-file header whose name ends in '/' is a directory.
  if ((typeflag === '0' || typeflag === '\0') && rawName.endsWith('/')) return 'directory'
  if (FILE_TYPES.has(typeflag)) return 'file'
  if (typeflag === '5') return 'directory'
  if (typeflag === '2') return 'symlink'
  if (typeflag === '1') return 'hardlink'
  return undefined
}

/** Returns [] for the archive root directory ('./'), which is implicit in the mount. */
function buildEntry(
  header: RawTarHeader,
  pending: PendingExtensions,
  rawName: string,
  type: TarEntryType,
  dataOffset: number,
  dataSize: number,
): TarEntry[] {
  const name = normaliseEntryPath(rawName)
  if (name === '') {
    if (type === 'directory') return []
    throw new TarFormatError(`a ${type} cannot be the archive root`)
  }
  const pax = pending.pax
  const entry: TarEntry = {
    name,
    type,
    size: type === 'file' ? dataSize : 0,
    dataOffset,
    mode: header.mode & 0o7777,
    uid: optional(pax.get('uid'), (v) => paxInteger(v, 'uid')) ?? header.uid,
    gid: optional(pax.get('gid'), (v) => paxInteger(v, 'gid')) ?? header.gid,
    mtime: optional(pax.get('mtime'), paxTime) ?? header.mtime,
  }
  if (type === 'symlink' || type === 'hardlink') entry.linkname = linkTarget(type, nonEmpty(pax.get('linkpath')) ?? pending.longLink ?? header.linkname)
  return [entry]
}

function linkTarget(type: 'symlink' | 'hardlink', raw: string): string {
  if (raw === '') throw new TarFormatError(`${type} has an empty target`)
  // Symlink targets are resolved by the kernel inside the mount and can't escape it, so keep them verbatim.
  if (type === 'symlink') return raw
  const target = withContext('hard-link target', () => normaliseEntryPath(raw))
  if (target === '') throw new TarFormatError(`hard link to the archive root`)
  return target
}

/** Lists a tar blob's members from its headers only, reading it in `readAheadBytes` windows. */
export async function walkTar(source: RangeSource, options: WalkTarOptions = {}): Promise<TarEntry[]> {
  return new TarWalker(source, options).walk()
}
