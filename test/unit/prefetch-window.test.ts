/** Sequential-read detection and the read-ahead window it earns. */
import { describe, expect, it } from 'vitest'
import { SequentialWindow } from '../../src/cache/prefetch-window.js'

const MiB = 1024 * 1024
const K128 = 128 * 1024
const settings = { initialWindowBytes: MiB, maxWindowBytes: 64 * MiB, runLookaheadFactor: 4, outOfOrderToleranceBytes: 16 * MiB, minRunBytes: 2 * MiB }

describe('SequentialWindow', () => {
  it('starts a run at offset 0 and doubles the window up to its cap while reads continue', () => {
    const w = new SequentialWindow(settings)
    const sizes: number[] = []
    let off = 0
    for (let i = 0; i < 200; i++) {
      const r = w.onRead(off, off + MiB)
      expect(r).toBeDefined()
      expect(r!.from).toBe(off + MiB)
      sizes.push(w.size)
      off += MiB
    }
    expect(sizes.slice(0, 4)).toEqual([MiB, 2 * MiB, 4 * MiB, 8 * MiB])
    expect(Math.max(...sizes)).toBe(64 * MiB)
  })

  it('never reads ahead for a random reader, and a lone read in the middle does not start a run', () => {
    const w = new SequentialWindow(settings)
    for (const off of [77 * MiB, 3 * MiB, 500 * MiB, 12 * MiB]) expect(w.onRead(off, off + 4096)).toBeUndefined()
    expect(w.size).toBe(0)
  })

  it('an mmap page fault in the middle (a 512 KiB window in four 128 KiB reads) reads nothing ahead; a longer run does', () => {
    const w = new SequentialWindow(settings)
    const base = 100 * MiB
    for (let i = 0; i < 4; i++) expect(w.onRead(base + i * K128, base + (i + 1) * K128)).toBeUndefined()
    let ahead: { from: number; to: number } | undefined
    for (let i = 4; i < 20 && !ahead; i++) ahead = w.onRead(base + i * K128, base + (i + 1) * K128)
    expect(ahead).toBeDefined()
  })

  it('a 1 MiB pread in the middle (eight 128 KiB reads) reads ahead at most 4 × what it read', () => {
    const w = new SequentialWindow(settings)
    const base = 100 * MiB
    let ahead = 0
    for (let i = 0; i < 8; i++) {
      const r = w.onRead(base + i * K128, base + (i + 1) * K128)
      if (r) ahead = Math.max(ahead, r.to - base - (i + 1) * K128)
    }
    expect(ahead).toBeLessThanOrEqual(4 * MiB)
  })

  it('keeps a run going when the kernel\'s parallel reads arrive out of order', () => {
    const w = new SequentialWindow(settings)
    w.onRead(0, K128)
    for (let base = K128; base < 64 * MiB; base += 4 * K128) {
      for (const i of [2, 0, 3, 1]) w.onRead(base + i * K128, base + (i + 1) * K128)
    }
    expect(w.size).toBe(64 * MiB)
    // A jump far beyond the tolerance ends the run.
    expect(w.onRead(900 * MiB, 900 * MiB + K128)).toBeUndefined()
    expect(w.size).toBe(0)
  })
})
