/**
 * Single-flight plumbing for the block cache: one network fetch shared by every reader that needs its
 * blocks, where each reader keeps its own deadline.
 */
import { DeadlineError } from '../registry/errors.js'

/**
 * Settles like `work`, or rejects with `onAbort()` as soon as `signal` fires, whichever comes first. The work
 * itself is not cancelled (others may be sharing it); its eventual rejection is observed so it never surfaces
 * as an unhandled rejection.
 */
export function raceSignal<T>(work: Promise<T>, signal: AbortSignal, onAbort: () => Error): Promise<T> {
  if (signal.aborted) {
    work.catch(() => undefined)
    return Promise.reject(onAbort())
  }
  return new Promise<T>((resolve, reject) => {
    const abort = (): void => reject(onAbort())
    signal.addEventListener('abort', abort, { once: true })
    work.then(
      (value) => { signal.removeEventListener('abort', abort); resolve(value) },
      (err: unknown) => { signal.removeEventListener('abort', abort); reject(err) },
    )
  })
}

/**
 * A fetch that several readers wait on. It runs under its own AbortController, which fires only when every
 * reader that joined has given up: one reader's deadline must not fail the others, yet a fetch nobody waits
 * for any more (a stalled connection, say) must not run forever, holding a pin on its blob.
 */
export class SharedFetch<T> {
  readonly promise: Promise<T>
  private readonly controller = new AbortController()
  private waiters = 0
  private settled = false

  /** `onAbandon` runs once if the fetch is given up, so the owner can stop handing it to new readers. */
  constructor(run: (signal: AbortSignal) => Promise<T>, private readonly onAbandon: () => void) {
    const abandoned = new Promise<never>((_resolve, reject) => {
      this.controller.signal.addEventListener('abort', () => reject(this.controller.signal.reason), { once: true })
    })
    this.promise = Promise.race([run(this.controller.signal), abandoned])
    this.promise.then(() => { this.settled = true }, () => { this.settled = true })
  }

  get aborted(): boolean {
    return this.controller.signal.aborted
  }

  /** Registers a reader; when its signal fires it stops counting, and the last one leaving abandons the fetch. */
  join(signal: AbortSignal): Promise<T> {
    if (this.settled) return this.promise
    if (signal.aborted) {
      if (this.waiters === 0) this.abandon('its only reader had already given up')
      return this.promise
    }
    this.waiters++
    const leave = (): void => {
      this.waiters--
      if (this.waiters === 0 && !this.settled) this.abandon('every reader waiting for it gave up')
    }
    signal.addEventListener('abort', leave, { once: true })
    const forget = (): void => signal.removeEventListener('abort', leave)
    this.promise.then(forget, forget)
    return this.promise
  }

  /** Gives the fetch up now (cache shutdown, or no reader left). Its result, if it still comes, is discarded. */
  abandon(why: string): void {
    if (this.controller.signal.aborted || this.settled) return
    this.controller.abort(new DeadlineError(`fetch abandoned: ${why}`))
    this.onAbandon()
  }
}
