/**
 * Blocks held in memory only, when the disk could not take them (a full or failing cache filesystem): reads
 * go on from memory and the registry meanwhile. Bounded by bytes, least recently used dropped first (a
 * dropped block is simply fetched again). In normal operation it is empty: the page cache of the blob files
 * is the memory tier.
 */
import { LRUCache } from 'lru-cache'

export class MemoryTier {
  private readonly blocks: LRUCache<string, Buffer>

  constructor(maxBytes: number) {
    this.blocks = new LRUCache<string, Buffer>({ maxSize: Math.max(1, Math.floor(maxBytes)), sizeCalculation: (b) => Math.max(1, b.length) })
  }

  get(hex: string, n: number): Buffer | undefined {
    return this.blocks.get(`${hex}/${n}`)
  }

  has(hex: string, n: number): boolean {
    return this.blocks.has(`${hex}/${n}`)
  }

  set(hex: string, n: number, data: Buffer): void {
    this.blocks.set(`${hex}/${n}`, data)
  }

  delete(hex: string, n: number): void {
    this.blocks.delete(`${hex}/${n}`)
  }

  /** Drops every block of a blob. */
  dropBlob(hex: string): void {
    const prefix = `${hex}/`
    for (const key of [...this.blocks.keys()]) if (key.startsWith(prefix)) this.blocks.delete(key)
  }

  get bytes(): number {
    return this.blocks.calculatedSize
  }
}
