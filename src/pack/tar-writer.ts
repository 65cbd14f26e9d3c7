/**
 * A single-entry tar as Go's archive/tar writes it for modctl: ustar header, a PAX header when the size is
 * 8 GiB or more or the name does not fit ustar (long or non-ASCII), the data, padding, two zero blocks.
 */
const BLOCK = 512
const USTAR_MAX_SIZE = 0o77777777777 // 11 octal digits: 8 GiB - 1

export interface TarFileHeader {
  name: string
  size: number
  mode: number
  uid: number
  gid: number
  mtimeSec: number
}

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, '0') + '\0'
}

function writeString(block: Buffer, offset: number, width: number, s: string): void {
  block.write(s, offset, width, 'utf8')
}

function ustarHeader(name: string, size: number, mode: number, uid: number, gid: number, mtimeSec: number, typeflag: string): Buffer {
  const b = Buffer.alloc(BLOCK)
  writeString(b, 0, 100, name)
  writeString(b, 100, 8, octal(mode & 0o7777, 8))
  writeString(b, 108, 8, octal(uid, 8))
  writeString(b, 116, 8, octal(gid, 8))
  writeString(b, 124, 12, octal(size, 12))
  writeString(b, 136, 12, octal(mtimeSec, 12))
  b.fill(' ', 148, 156) // checksum is computed with its own field as spaces
  writeString(b, 156, 1, typeflag)
  writeString(b, 257, 6, 'ustar\0')
  writeString(b, 263, 2, '00')
  let sum = 0
  for (const byte of b) sum += byte
  writeString(b, 148, 8, sum.toString(8).padStart(6, '0') + '\0 ')
  return b
}

function paxRecord(key: string, value: string): string {
  // The length prefix counts itself: iterate until the digit count is stable.
  const body = ` ${key}=${value}\n`
  let len = Buffer.byteLength(body)
  let total = len + String(len).length
  while (total !== String(total).length + len) total = String(total).length + len
  return `${total}${body}`
}

function padTo(n: number): number {
  return (BLOCK - (n % BLOCK)) % BLOCK
}

/** Header bytes (PAX + ustar) for one file entry. */
export function tarHeaderFor(h: TarFileHeader): Buffer {
  const records: string[] = []
  const asciiShort = /^[\x20-\x7e]*$/.test(h.name) && Buffer.byteLength(h.name) <= 100
  if (!asciiShort) records.push(paxRecord('path', h.name))
  if (h.size > USTAR_MAX_SIZE) records.push(paxRecord('size', String(h.size)))
  const parts: Buffer[] = []
  if (records.length) {
    const pax = Buffer.from(records.join(''), 'utf8')
    parts.push(ustarHeader('PaxHeaders.0/' + (asciiShort ? h.name : 'entry').slice(0, 80), pax.length, 0o644, 0, 0, h.mtimeSec, 'x'))
    parts.push(pax, Buffer.alloc(padTo(pax.length)))
  }
  const shortName = asciiShort ? h.name : Buffer.from(h.name).subarray(0, 99).toString('latin1').replace(/[^\x20-\x7e]/g, '_')
  parts.push(ustarHeader(shortName, h.size > USTAR_MAX_SIZE ? 0 : h.size, h.mode, h.uid, h.gid, h.mtimeSec, '0'))
  return Buffer.concat(parts)
}

/** Padding after the data plus the two zero blocks that end the archive. */
export function tarTrailerFor(size: number): Buffer {
  return Buffer.alloc(padTo(size) + 2 * BLOCK)
}
