/**
 * Single-flight fetching of one blob's blocks: a missing block has at most one fetch (a "part": one ranged
 * GET of consecutive blocks) in progress, and every reader that needs it waits for that block — not for the
 * whole part — with its own deadline. A part is abandoned (its request aborted) only when every reader
 * waiting on it has given up, so one reader's deadline never fails another's read, and a stalled request
 * nobody waits for does not run forever.
 */
import { DeadlineError } from '../registry/errors.js'
import { CnaifsError } from '../util/errors.js'
import type { RunningJob } from './fetch-pool.js'
import type { FetchPurpose } from './worker-protocol.js'

interface Waiter {
  resolve: () => void
  reject: (err: Error) => void
  /** The part the reader counts on (it changes when a whole-blob response takes the block over). */
  part: Part
}

interface Part {
  first: number
  last: number
  job?: RunningJob
  /** Readers (and prefetches) counting on this part; at zero it is abandoned. */
  waiters: number
  blockWaiters: Map<number, Waiter[]>
  /** Readers waiting for the part's bytes to be written up to a position (before their block is complete). */
  positionWaiters: Array<{ position: number; waiter: Waiter }>
  /** The part's range is in the data file from its start up to this blob position. */
  reached: number
  settled: boolean
  /** The server answered with the whole blob: every absent block arrives through this part. */
  whole?: boolean
  /** Its request was aborted (abandoned, or its blocks were taken over by a whole-blob answer). */
  cancelled?: boolean
}

/** A part started by fetch(): `settled` resolves (never rejects) when its request is over. */
export interface StartedPart {
  first: number
  last: number
  settled: Promise<void>
}

/** What a running part reports besides its landed blocks (BlockFetcher.landed()). */
export interface PartEvents {
  /** Its range is in the data file from its start up to `at`. */
  reached(at: number): void
  /** The server sends the whole blob in answer to it. */
  whole(): void
}

/** Starts the job that fetches blocks [first, last]. */
export type PartStarter = (first: number, last: number, purpose: FetchPurpose, events: PartEvents) => RunningJob

export class BlockFetcher {
  /** The part each in-flight block belongs to. */
  private readonly parts = new Map<number, Part>()
  private readonly running = new Set<Part>()

  /** Told when a part turns out to bring the whole blob (the owner answers with adoptWhole()). */
  onWhole?: (part: Part) => void

  constructor(private readonly digest: string, private readonly blockSize: number, private readonly start: PartStarter) {}

  /** How far the part fetching block `n` has written its range (its start if nothing yet); undefined if none. */
  reachedFor(n: number): number | undefined {
    return this.parts.get(n)?.reached
  }

  isInFlight(n: number): boolean {
    return this.parts.has(n)
  }

  /** Parts in progress (a pinned blob is never evicted). */
  get active(): number {
    return this.running.size
  }

  /**
   * Starts fetching the given blocks (ascending, none in flight): runs of consecutive blocks, each split into
   * parts of at most `maxBlocks`. Returns the parts started, each settling when its request is over.
   */
  fetch(blocks: number[], maxBlocks: number, purpose: FetchPurpose): StartedPart[] {
    const started: StartedPart[] = []
    let i = 0
    while (i < blocks.length) {
      let j = i
      while (j + 1 < blocks.length && blocks[j + 1] === blocks[j]! + 1 && j + 1 - i < maxBlocks) j++
      started.push(this.startPart(blocks[i]!, blocks[j]!, purpose))
      i = j + 1
    }
    return started
  }

  /**
   * Waits until block `n` lands (or its part fails). Resolves at once if no part is fetching it (the caller
   * looks at the block's state again). Rejects with DeadlineError when `signal` fires.
   */
  waitFor(n: number, signal: AbortSignal, until?: number): Promise<void> {
    const first = this.parts.get(n)
    if (!first) return Promise.resolve()
    if (until !== undefined && first.reached >= until) return Promise.resolve()
    if (signal.aborted) return Promise.reject(this.deadline(n))
    first.waiters++
    return new Promise<void>((resolve, reject) => {
      let done = false
      const leave = (): boolean => {
        if (done) return false
        done = true
        signal.removeEventListener('abort', onAbort)
        const part = waiter.part
        part.waiters--
        const list = part.blockWaiters.get(n)
        const at = list ? list.indexOf(waiter) : -1
        if (at >= 0) list!.splice(at, 1)
        const pw = part.positionWaiters.findIndex((p) => p.waiter === waiter)
        if (pw >= 0) part.positionWaiters.splice(pw, 1)
        return true
      }
      const waiter: Waiter = {
        part: first,
        resolve: () => { if (leave()) resolve() },
        reject: (err) => { if (leave()) reject(err) },
      }
      const onAbort = (): void => {
        const part = waiter.part
        if (!leave()) return
        if (part.waiters === 0 && !part.settled) this.abandon(part)
        reject(this.deadline(n))
      }
      signal.addEventListener('abort', onAbort, { once: true })
      const list = first.blockWaiters.get(n) ?? []
      first.blockWaiters.set(n, list)
      list.push(waiter)
      if (until !== undefined && first.job?.watch) {
        first.positionWaiters.push({ position: until, waiter })
        first.job.watch(until)
      }
    })
  }

  /**
   * `part`'s server sends the whole blob: each of `absent` (blocks nobody has) arrives through it. Blocks that
   * other parts fetch move to it, with their readers, and those parts are cancelled (a pull-through cache
   * would otherwise stream the whole blob once per request); blocks nobody fetched are taken over too, so
   * readers that need them join this one response instead of asking again.
   */
  adoptWhole(part: Part, absent: number[]): void {
    // A part already cancelled — typically because another whole-blob answer took its blocks over, when a
    // pull-through cache answers every request with the whole blob — must not take them back: its own
    // request is ending, and the readers it took would fail with it.
    if (part.settled || part.cancelled) return
    part.whole = true
    const others = new Set<Part>()
    for (const n of absent) {
      const other = this.parts.get(n)
      if (other === part) continue
      if (other) {
        others.add(other)
        const list = other.blockWaiters.get(n) ?? []
        other.blockWaiters.delete(n)
        const into = part.blockWaiters.get(n) ?? []
        part.blockWaiters.set(n, into)
        for (const w of list) {
          w.part = part
          other.waiters--
          part.waiters++
          into.push(w)
          const pw = other.positionWaiters.findIndex((p) => p.waiter === w)
          if (pw >= 0) other.positionWaiters.splice(pw, 1) // the whole response lands the block; no position to watch
        }
      }
      this.parts.set(n, part)
    }
    for (const other of others) {
      if ([...this.parts.values()].includes(other)) continue
      other.cancelled = true
      other.job?.abort()
    }
  }

  /** Keeps a part alive until `signal` fires, without waiting for it (prefetch). */
  hold(n: number, signal: AbortSignal): void {
    this.waitFor(n, signal).catch(() => undefined)
  }

  /** Block `n` arrived (from whichever part: a server that sent the whole blob delivers others' blocks too). */
  landed(n: number): void {
    const part = this.parts.get(n)
    if (!part) return
    const list = part.blockWaiters.get(n)
    part.blockWaiters.delete(n)
    this.parts.delete(n)
    for (const w of [...(list ?? [])]) w.resolve()
  }

  private reachedAt(part: Part, at: number): void {
    if (at <= part.reached) return
    part.reached = at
    for (const p of part.positionWaiters.filter((w) => w.position <= at)) p.waiter.resolve()
  }

  /** Fails every waiter and aborts every part (the blob turned out corrupt, or the cache is closing). */
  failAll(err: Error): void {
    for (const part of [...this.running]) {
      this.abandon(part)
      this.finish(part, err)
    }
  }

  private startPart(first: number, last: number, purpose: FetchPurpose): StartedPart {
    const part: Part = { first, last, waiters: 0, blockWaiters: new Map(), positionWaiters: [], reached: first * this.blockSize, settled: false }
    const events: PartEvents = { reached: (at) => this.reachedAt(part, at), whole: () => this.onWhole?.(part) }
    for (let n = first; n <= last; n++) this.parts.set(n, part)
    this.running.add(part)
    let done: Promise<void>
    try {
      part.job = this.start(first, last, purpose, events)
      done = part.job.done
    } catch (err) {
      done = Promise.reject(err)
    }
    const settled = done.then(
      () => this.finish(part, new CnaifsError('EIO', `fetch of blob ${this.digest} blocks ${first}-${last} ended without them`)),
      (err: Error) => this.finish(part, err),
    )
    return { first, last, settled }
  }

  /** The part is over: blocks it did not deliver fail their waiters (they may try again). */
  private finish(part: Part, err: Error): void {
    if (part.settled) return
    part.settled = true
    this.running.delete(part)
    if (part.whole) {
      for (const [n, p] of [...this.parts]) if (p === part) this.parts.delete(n)
    } else {
      for (let n = part.first; n <= part.last; n++) if (this.parts.get(n) === part) this.parts.delete(n)
    }
    for (const list of [...part.blockWaiters.values()]) for (const w of [...list]) w.reject(err)
    part.blockWaiters.clear()
    part.positionWaiters = []
  }

  /** Nobody waits any more: stop handing the part to new readers and cancel its request. */
  private abandon(part: Part): void {
    for (const [n, p] of [...this.parts]) if (p === part) this.parts.delete(n)
    part.cancelled = true
    part.job?.abort()
  }

  private deadline(n: number): DeadlineError {
    return new DeadlineError(`read of blob ${this.digest} block ${n}: deadline exceeded`)
  }
}
