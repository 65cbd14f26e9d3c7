/**
 * The checksum a block map keeps of each block: CRC-32 of the block's bytes, seeded with the block number (so
 * the bytes of one block written where another belongs do not match). It tells whether the bytes a data file
 * holds are still the ones that were fetched (a damaged disk, a torn write, a stray writer), at the speed of
 * the disk (zlib's CRC runs at several GB/s; a second SHA-256 over every byte would halve cnaifs's throughput
 * on small machines). Whether those bytes are the model's is decided by the blob's own SHA-256 digest, checked
 * over the whole blob as it completes; a process able to rewrite cache files could rewrite the maps too, so no
 * per-block digest stored beside the data could stop it: the cache's protection against it is its 0700/0600
 * modes.
 */
import { crc32 } from 'node:zlib'

export class BlockChecksum {
  private value: number

  constructor(block: number) {
    this.value = block >>> 0
  }

  update(chunk: Uint8Array): void {
    this.value = crc32(chunk, this.value)
  }

  digest(): number {
    return this.value >>> 0
  }
}

export function blockChecksum(data: Uint8Array, block: number): number {
  return crc32(data, block >>> 0) >>> 0
}
