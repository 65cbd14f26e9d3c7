/** The persisted block map on its own: what it records, when, and what a damaged file reads as. */
import { randomBytes, createHash } from 'node:crypto'
import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { BlockMap, BlockState, HEADER_BYTES, MapMismatchError, SLOT_BYTES } from '../../src/cache/block-map.js'
import { blockChecksum } from '../../src/cache/block-checksum.js'

const B = 1024
let dir: string
beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'cnaifs-map-')) })
afterEach(async () => { await rm(dir, { recursive: true, force: true }) })

function blobOf(size: number): { data: Buffer; blob: { digest: string; size: number } } {
  const data = randomBytes(size)
  return { data, blob: { digest: 'sha256:' + createHash('sha256').update(data).digest('hex'), size } }
}

describe('BlockMap', () => {
  it('records landed blocks only at persist, after the data sync, and reads them back as OnDisk', async () => {
    const { data, blob } = blobOf(3 * B + 100)
    const path = join(dir, 'x.map')
    const map = await BlockMap.open(path, blob, B)
    expect(map.blockCount).toBe(4)
    expect(map.blockLength(3)).toBe(100)
    expect(map.landed(0, blockChecksum(data.subarray(0, B), 0))).toBe(true)
    expect(map.landed(3, blockChecksum(data.subarray(3 * B), 3))).toBe(true)
    expect(map.state(0)).toBe(BlockState.Ready)
    expect(map.pendingSlots).toBe(2)
    // Nothing is written before persist; the sync runs before the slots are written.
    expect((await stat(path)).size).toBe(HEADER_BYTES)
    const order: string[] = []
    await map.persist(async () => { order.push('sync'); expect((await stat(path)).size).toBe(HEADER_BYTES) })
    order.push('done')
    expect(order).toEqual(['sync', 'done'])
    expect(map.pendingSlots).toBe(0)
    await map.close()

    const again = await BlockMap.open(path, blob, B)
    expect([0, 1, 2, 3].map((n) => again.state(n))).toEqual([BlockState.OnDisk, BlockState.Absent, BlockState.Absent, BlockState.OnDisk])
    expect(again.checksum(3)).toBe(blockChecksum(data.subarray(3 * B), 3))
    expect(again.present).toBe(2)
    expect(again.ready).toBe(0)
    expect(again.presentBytes()).toBe(B + 100)
    again.checked(0)
    expect(again.state(0)).toBe(BlockState.Ready)
    await again.close()
  })

  it('a close during a persist waits for it: the slots that persist took are written, not lost', async () => {
    const { data, blob } = blobOf(2 * B)
    const path = join(dir, 'x.map')
    const map = await BlockMap.open(path, blob, B)
    map.landed(0, blockChecksum(data.subarray(0, B), 0))
    let syncDone!: () => void
    // The durability timer's persist: it has taken slot 0 and waits for the data file's fdatasync.
    const first = map.persist(() => new Promise<void>((resolve) => { syncDone = resolve }))
    map.landed(1, blockChecksum(data.subarray(B), 1))
    // The shutdown path: a last persist, then close, while the first one still waits.
    const closing = map.persist(async () => undefined).then(() => map.close())
    await new Promise((r) => setTimeout(r, 20))
    syncDone()
    await first
    await closing
    const again = await BlockMap.open(path, blob, B)
    expect([0, 1].map((n) => again.state(n))).toEqual([BlockState.OnDisk, BlockState.OnDisk])
    await again.close()
  })

  it('keeps the slots for the next attempt when the data sync fails', async () => {
    const { data, blob } = blobOf(2 * B)
    const map = await BlockMap.open(join(dir, 'x.map'), blob, B)
    map.landed(1, blockChecksum(data.subarray(B), 1))
    await expect(map.persist(async () => { throw Object.assign(new Error('disk full'), { code: 'ENOSPC' }) })).rejects.toThrow('disk full')
    expect(map.pendingSlots).toBe(1)
    await map.persist(async () => undefined)
    expect(map.pendingSlots).toBe(0)
    await map.close()
  })

  it('reads a torn, misplaced or garbage slot as absent, never as present', async () => {
    const { data, blob } = blobOf(4 * B)
    const path = join(dir, 'x.map')
    const map = await BlockMap.open(path, blob, B)
    for (let n = 0; n < 4; n++) map.landed(n, blockChecksum(data.subarray(n * B, (n + 1) * B), n))
    await map.persist(async () => undefined)
    await map.close()
    const fh = await open(path, 'r+')
    // Slot 1: one byte of its checksum flipped (a torn write). Slot 2: a copy of slot 3 (a misplaced write).
    const slot1 = HEADER_BYTES + SLOT_BYTES + 9
    const byte = Buffer.alloc(1)
    await fh.read(byte, 0, 1, slot1)
    await fh.write(Buffer.from([byte[0]! ^ 1]), 0, 1, slot1)
    const slot3 = Buffer.alloc(SLOT_BYTES)
    await fh.read(slot3, 0, SLOT_BYTES, HEADER_BYTES + 3 * SLOT_BYTES)
    await fh.write(slot3, 0, SLOT_BYTES, HEADER_BYTES + 2 * SLOT_BYTES)
    await fh.close()
    const again = await BlockMap.open(path, blob, B)
    expect([0, 1, 2, 3].map((n) => again.state(n))).toEqual([BlockState.OnDisk, BlockState.Absent, BlockState.Absent, BlockState.OnDisk])
    await again.close()
  })

  it('refuses a map of another blob, size or block size, or with a damaged header', async () => {
    const { blob } = blobOf(2 * B)
    const path = join(dir, 'x.map')
    await (await BlockMap.open(path, blob, B)).close()
    await expect(BlockMap.open(path, { ...blob, size: blob.size + 1 }, B)).rejects.toBeInstanceOf(MapMismatchError)
    await expect(BlockMap.open(path, blob, 2 * B)).rejects.toBeInstanceOf(MapMismatchError)
    await expect(BlockMap.open(path, blobOf(2 * B).blob, B)).rejects.toBeInstanceOf(MapMismatchError)
    await writeFile(path, (await readFile(path)).fill(0, 30, 31))
    await expect(BlockMap.open(path, blob, B)).rejects.toBeInstanceOf(MapMismatchError)
  })

  it('a verified blob trusts its checksums: a block fetched again must match, and a complete trusted blob is verified', async () => {
    const { data, blob } = blobOf(3 * B)
    const path = join(dir, 'x.map')
    const map = await BlockMap.open(path, blob, B)
    for (let n = 0; n < 3; n++) map.landed(n, blockChecksum(data.subarray(n * B, (n + 1) * B), n))
    expect(map.complete).toBe(true)
    expect(map.verified).toBe(false) // complete, but not yet hashed as a whole
    map.markVerified()
    expect(map.verified).toBe(true)
    await map.persist(async () => undefined)
    await map.close()

    const again = await BlockMap.open(path, blob, B)
    expect(again.verified).toBe(true)
    expect(again.isTrusted(1)).toBe(true)
    again.drop(1)
    expect(again.verified).toBe(false)
    expect(again.landed(1, blockChecksum(Buffer.alloc(B), 1))).toBe(false) // other bytes than the verified blob had
    expect(again.state(1)).toBe(BlockState.Absent)
    expect(again.landed(1, blockChecksum(data.subarray(B, 2 * B), 1))).toBe(true)
    expect(again.verified).toBe(true)
    await again.close()
  })

  it('creates the file private to its owner, and two opens of a missing map agree on one file', async () => {
    const { blob } = blobOf(B)
    const path = join(dir, 'x.map')
    const [a, b] = await Promise.all([BlockMap.open(path, blob, B), BlockMap.open(path, blob, B)])
    expect((await stat(path)).mode & 0o777).toBe(0o600)
    await a.close()
    await b.close()
  })
})

describe('blockChecksum', () => {
  it('changes with any byte and with the block number', () => {
    const data = randomBytes(B)
    const base = blockChecksum(data, 5)
    expect(blockChecksum(data, 6)).not.toBe(base)
    for (const at of [0, 17, B - 1]) {
      const bad = Buffer.from(data)
      bad[at] = bad[at]! ^ 0x10
      expect(blockChecksum(bad, 5)).not.toBe(base)
    }
  })
})
