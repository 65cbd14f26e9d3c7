/**
 * The checksum a block map keeps of each block: CRC-32 of the block's bytes, seeded with the block number (so
 * the bytes of one block written where another belongs do not match). It tells whether the bytes a data file
 * holds are still the ones that were fetched (a damaged disk, a torn write, a stray writer), at the speed of
 * the disk (Node's zlib CRC-32 runs at ~5.5 GB/s on the project machine, SHA-256 at ~1.6 GB/s, and every
 * fetched byte is already hashed once by the blob's running SHA-256). Whether those bytes are the model's is decided by the blob's own SHA-256 digest, checked
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
