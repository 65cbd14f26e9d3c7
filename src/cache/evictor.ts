/**
 * Keeps the blob cache within its size: whole blobs, least recently used first (a half-evicted blob is as
 * expensive to read as a missing one, and blobs are read whole more often than not), never one in use.
 */
export interface Evictable {
  readonly hex: string
  readonly diskBytes: number
  readonly pinned: boolean
  readonly lastUseMs: number
}

/** Blobs to remove, oldest first, until `used` is at most `limit`; fewer if the rest are in use. */
export function chooseVictims<T extends Evictable>(blobs: Iterable<T>, used: number, limit: number): T[] {
  if (used <= limit) return []
  const candidates = [...blobs].filter((b) => b.diskBytes > 0 && !b.pinned).sort((a, b) => a.lastUseMs - b.lastUseMs)
  const victims: T[] = []
  for (const b of candidates) {
    if (used <= limit) break
    victims.push(b)
    used -= b.diskBytes
  }
  return victims
}
