/**
 * The persisted map of a blob's cached blocks (nydus's chunk map): which blocks of the blob's data file hold
 * the blob's bytes, with the checksum of each (block-checksum.ts), and whether the whole blob has been verified
 * against its digest.
 *
 * File layout (`<hex>.map`, little-endian):
 *
 *   header  64 bytes   "CNAIFSBM", version, block size, blob size, blob digest (raw sha256), check
 *   slot n  48 bytes   at 64 + 48·n: kind ('BLK2' present / 0 erased), block length, checksum of the block,
 *                       n, check
 *   slot N  48 bytes   N = block count: kind 'VER1' once the whole blob hashed to its digest
 *
 * A slot's check is the first 4 bytes of sha256 over its other bytes, its slot number included, so a torn or
 * misplaced write reads as absent, never as present. Slots are written only after the block's bytes are
 * durable (the data file was fdatasynced), so after a crash or power loss a present slot always describes
 * bytes that reached the disk; the converse (durable bytes without a slot) just means a block is fetched again.
 *
 * In memory each block is Absent, OnDisk (a slot says present: its bytes must be checked against the slot's
 * checksum before they are first served in this process) or Ready (fetched or checked in this process).
 * A block's checksum is trusted when it was part of a blob that hashed to the blob's digest: a trusted block
 * that is fetched again must arrive with the same checksum, and a blob whose blocks are all present and
 * trusted is verified without hashing it again.
 */
import { createHash } from 'node:crypto'
import { link, open, rm, type FileHandle } from 'node:fs/promises'
import { dirname } from 'node:path'
import { PRIVATE_FILE_MODE, fsyncDir, tempPathIn } from '../util/atomic-write.js'
import { CnaifsError } from '../util/errors.js'
import type { BlobRef } from './types.js'

export const HEADER_BYTES = 64
export const SLOT_BYTES = 48
const MAGIC = Buffer.from('CNAIFSBM')
const VERSION = 2
const KIND_BLOCK = 0x324b4c42 // 'BLK2'
const KIND_VERIFIED = 0x31524556 // 'VER1'

export enum BlockState {
  Absent = 0,
  OnDisk = 1,
  Ready = 2,
}

/** The map file does not belong to this blob or block size (or its header is damaged). */
export class MapMismatchError extends CnaifsError {
  constructor(path: string, why: string) {
    super('EFORMAT', `block map ${path}: ${why}`)
  }
}

function check4(bytes: Buffer): number {
  return createHash('sha256').update(bytes).digest().readUInt32LE(0)
}

function header(blob: BlobRef, blockSize: number): Buffer {
  const h = Buffer.alloc(HEADER_BYTES)
  MAGIC.copy(h, 0)
  h.writeUInt32LE(VERSION, 8)
  h.writeUInt32LE(blockSize, 12)
  h.writeBigUInt64LE(BigInt(blob.size), 16)
  Buffer.from(blob.digest.slice('sha256:'.length), 'hex').copy(h, 24)
  h.writeUInt32LE(check4(h.subarray(0, 56)), 56)
  return h
}

/** A slot: the checksum of a block (in bytes 8..12), or the blob's digest for the verified slot (8..40). */
function slot(kind: number, n: number, length: number, value: Buffer): Buffer {
  const s = Buffer.alloc(SLOT_BYTES)
  s.writeUInt32LE(kind, 0)
  s.writeUInt32LE(length, 4)
  value.copy(s, 8, 0, Math.min(32, value.length))
  s.writeUInt32LE(n, 40)
  s.writeUInt32LE(check4(s.subarray(0, 44)), 44)
  return s
}

/** An erased slot: all zero, so it never checks as present. */
const ERASED = Buffer.alloc(SLOT_BYTES)

export class BlockMap {
  readonly blockCount: number
  private readonly states: Uint8Array
  private readonly checksums: Uint32Array
  /** 1 where the block's checksum is trusted (see above). */
  private readonly trusted: Uint8Array
  private trustedCount = 0
  /** Slots to write at the next persist(), by slot number (the block count is the verified slot). */
  private readonly pending = new Map<number, Buffer>()
  private verifiedSlot = false
  private readyCount = 0
  private presentCount = 0
  private closed = false
  /** The persist writing now, if any (see persist()). */
  private writing?: Promise<void>

  private constructor(
    readonly path: string,
    readonly blob: BlobRef,
    readonly blockSize: number,
    private readonly fh: FileHandle,
  ) {
    this.blockCount = Math.ceil(blob.size / blockSize)
    this.states = new Uint8Array(this.blockCount)
    this.checksums = new Uint32Array(this.blockCount)
    this.trusted = new Uint8Array(this.blockCount)
  }

  /**
   * Opens the map of `blob`, creating it (atomically: a new map appears whole or not at all) when there is
   * none. Throws MapMismatchError when the file is of another blob or block size, or its header is damaged.
   */
  static async open(path: string, blob: BlobRef, blockSize: number): Promise<BlockMap> {
    let fh: FileHandle
    try {
      fh = await open(path, 'r+')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      await createMapFile(path, header(blob, blockSize))
      fh = await open(path, 'r+')
    }
    const map = new BlockMap(path, blob, blockSize, fh)
    try {
      await map.load()
    } catch (err) {
      await fh.close()
      throw err
    }
    return map
  }

  private async load(): Promise<void> {
    const expected = header(this.blob, this.blockSize)
    const h = Buffer.alloc(HEADER_BYTES)
    const { bytesRead } = await this.fh.read(h, 0, HEADER_BYTES, 0)
    if (bytesRead !== HEADER_BYTES || !h.equals(expected)) {
      throw new MapMismatchError(this.path, bytesRead !== HEADER_BYTES ? 'truncated header' : 'header does not match the blob, its size or the block size')
    }
    const slots = Buffer.alloc((this.blockCount + 1) * SLOT_BYTES)
    const read = (await this.fh.read(slots, 0, slots.length, HEADER_BYTES)).bytesRead
    for (let n = 0; n <= this.blockCount; n++) {
      const at = n * SLOT_BYTES
      if (at + SLOT_BYTES > read) break
      const s = slots.subarray(at, at + SLOT_BYTES)
      const kind = s.readUInt32LE(0)
      if (kind === 0 || s.readUInt32LE(40) !== n || s.readUInt32LE(44) !== check4(s.subarray(0, 44))) continue
      if (n < this.blockCount && kind === KIND_BLOCK && s.readUInt32LE(4) === this.blockLength(n)) {
        this.checksums[n] = s.readUInt32LE(8)
        this.states[n] = BlockState.OnDisk
        this.presentCount++
      } else if (n === this.blockCount && kind === KIND_VERIFIED && s.subarray(8, 40).equals(this.blobDigestRaw())) {
        this.verifiedSlot = true
      }
    }
    // The verified slot vouches for the checksums of the blocks present with it; a block dropped since (its
    // slot erased) is fetched again untrusted, and the blob is then verified by hashing it once more.
    if (this.verifiedSlot) {
      for (let n = 0; n < this.blockCount; n++) if (this.states[n] !== BlockState.Absent) this.trust(n)
    }
  }

  private trust(n: number): void {
    if (this.trusted[n]) return
    this.trusted[n] = 1
    this.trustedCount++
  }

  blockLength(n: number): number {
    return Math.max(0, Math.min(this.blockSize, this.blob.size - n * this.blockSize))
  }

  state(n: number): BlockState {
    return this.states[n] as BlockState
  }

  /** The block's recorded checksum, for blocks that are OnDisk or Ready (and trusted ones dropped since). */
  checksum(n: number): number {
    return this.checksums[n]!
  }

  /** Blocks whose bytes are in the data file (OnDisk or Ready). */
  get present(): number {
    return this.presentCount
  }

  get ready(): number {
    return this.readyCount
  }

  get complete(): boolean {
    return this.presentCount === this.blockCount
  }

  /** Every block is present with a trusted checksum: the blob's bytes are known to hash to its digest. */
  get verified(): boolean {
    return this.presentCount === this.blockCount && this.trustedCount === this.blockCount
  }

  /** Bytes of the blob in the data file. */
  presentBytes(): number {
    if (this.presentCount === this.blockCount) return this.blob.size
    let total = 0
    for (let n = 0; n < this.blockCount; n++) if (this.states[n] !== BlockState.Absent) total += this.blockLength(n)
    return total
  }

  /**
   * The block's bytes are in the data file, with `checksum` (computed as they were written). It is Ready
   * now; its slot is written at the next persist(), after the data file has been synced.
   * Returns false (and changes nothing) when the block's checksum is trusted and `checksum` differs from it:
   * the source served other bytes than the blob had when it was verified.
   */
  landed(n: number, checksum: number): boolean {
    const prior = this.states[n] as BlockState
    if (this.trusted[n] && this.checksums[n] !== checksum) return false
    this.checksums[n] = checksum
    if (prior === BlockState.Absent) this.presentCount++
    if (prior !== BlockState.Ready) this.readyCount++
    this.states[n] = BlockState.Ready
    const value = Buffer.alloc(4)
    value.writeUInt32LE(checksum >>> 0, 0)
    this.pending.set(n, slot(KIND_BLOCK, n, this.blockLength(n), value))
    return true
  }

  /** An OnDisk block's bytes were read back and matched its checksum: it may be served. */
  checked(n: number): void {
    if (this.states[n] !== BlockState.OnDisk) return
    this.states[n] = BlockState.Ready
    this.readyCount++
  }

  /**
   * Forgets a block whose bytes on disk failed their check; its slot is erased at persist(). A trusted
   * checksum stays known in this process, so the block fetched again must match it.
   */
  drop(n: number): void {
    const prior = this.states[n] as BlockState
    if (prior === BlockState.Absent) return
    if (prior === BlockState.Ready) this.readyCount--
    this.presentCount--
    this.states[n] = BlockState.Absent
    this.pending.set(n, ERASED)
  }

  /**
   * The blob's blocks, in order, hashed to the blob's digest: every checksum is trusted from now on, and the
   * verified slot is written at the next persist().
   */
  markVerified(): void {
    for (let n = 0; n < this.blockCount; n++) this.trust(n)
    if (this.verifiedSlot) return
    this.verifiedSlot = true
    this.pending.set(this.blockCount, slot(KIND_VERIFIED, this.blockCount, 0, this.blobDigestRaw()))
  }

  /** Whether the block's checksum is trusted (part of a verified blob). */
  isTrusted(n: number): boolean {
    return this.trusted[n] === 1
  }

  /** Slots waiting to be written. */
  get pendingSlots(): number {
    return this.pending.size
  }

  /**
   * Writes the waiting slots. `syncData` runs first (fdatasync of the data file), so a slot never reaches
   * the disk before the bytes it describes. Runs of adjacent slots go out in one write. One persist runs at
   * a time: a call made meanwhile waits for it, then writes what is still waiting, so the durability timer's
   * persist and the last one before close() never race (the slots a running persist took would be lost if
   * close() shut the file under it).
   */
  async persist(syncData: () => Promise<void>): Promise<void> {
    while (this.writing) await this.writing.catch(() => undefined)
    if (!this.pending.size || this.closed) return
    const run = this.writePending(syncData)
    this.writing = run
    try {
      await run
    } finally {
      if (this.writing === run) this.writing = undefined
    }
  }

  private async writePending(syncData: () => Promise<void>): Promise<void> {
    const batch = [...this.pending].sort((a, b) => a[0] - b[0])
    this.pending.clear()
    try {
      await syncData()
      let i = 0
      while (i < batch.length) {
        let j = i
        while (j + 1 < batch.length && batch[j + 1]![0] === batch[j]![0] + 1) j++
        const run = Buffer.concat(batch.slice(i, j + 1).map(([, s]) => s))
        await this.fh.write(run, 0, run.length, HEADER_BYTES + batch[i]![0] * SLOT_BYTES)
        i = j + 1
      }
    } catch (err) {
      // Not written: keep them for the next attempt, unless newer slots replaced them meanwhile.
      for (const [n, s] of batch) if (!this.pending.has(n)) this.pending.set(n, s)
      throw err
    }
  }

  /** Syncs the map file itself (at close, so the slots survive a power loss too). */
  async sync(): Promise<void> {
    if (!this.closed) await this.fh.datasync()
  }

  /** Closes the file once a persist in progress is over (its slots are written, or kept for nobody). */
  async close(): Promise<void> {
    while (this.writing) await this.writing.catch(() => undefined)
    if (this.closed) return
    this.closed = true
    await this.fh.close()
  }

  private blobDigestRaw(): Buffer {
    return Buffer.from(this.blob.digest.slice('sha256:'.length), 'hex')
  }
}

/**
 * Writes a new map file with its header only if none exists: a temp file linked to the final name (link
 * fails when another process created it first, in which case that one is used).
 */
async function createMapFile(path: string, headerBytes: Buffer): Promise<void> {
  const tmp = tempPathIn(dirname(path))
  const fh = await open(tmp, 'wx', PRIVATE_FILE_MODE)
  try {
    await fh.write(headerBytes, 0, headerBytes.length, 0)
    await fh.datasync()
  } finally {
    await fh.close()
  }
  try {
    await link(tmp, path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
  } finally {
    await rm(tmp, { force: true })
  }
  await fsyncDir(dirname(path))
}
