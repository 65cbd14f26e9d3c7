import { DeadlineError } from './errors.js'

export interface DeadlineBudget {
  /** --request-timeout: the time a request may take besides moving its bytes, and the time its headers may take. */
  timeoutMs: number
  /** The slowest transfer accepted as healthy: a request of N bytes gets timeoutMs + N / this. */
  minBytesPerSec: number
}

/**
 * The total deadline of one HTTP exchange, from connect to its last body byte (undici's own timeouts only bound idle
 * gaps, so a server trickling a byte a second would never time out). Its response headers must arrive within
 * `timeoutMs`; the whole exchange may take `timeoutMs + bytes / minBytesPerSec`, so a big range from a healthy server
 * always finishes and a trickle is cut. Also fires when the caller's signal does.
 */
export class RequestDeadline {
  readonly signal: AbortSignal
  private readonly controller = new AbortController()
  private readonly started = Date.now()
  private timer: NodeJS.Timeout | undefined
  private expiredPhase: 'headers' | 'body' | undefined
  private headersArrived = false
  private totalMs: number
  private readonly onParentAbort = (): void => this.controller.abort(this.parent?.reason)

  constructor(private readonly parent: AbortSignal | undefined, private readonly budget: DeadlineBudget, bytes: number) {
    this.signal = this.controller.signal
    this.totalMs = this.totalFor(bytes)
    if (parent?.aborted) this.controller.abort(parent.reason)
    else parent?.addEventListener('abort', this.onParentAbort, { once: true })
    this.arm(budget.timeoutMs)
  }

  /** Headers are in: from now on the whole-exchange budget applies (recomputed if the response carries more bytes). */
  onHeaders(bytes?: number): void {
    this.headersArrived = true
    if (bytes !== undefined) this.totalMs = Math.max(this.totalMs, this.totalFor(bytes))
    this.arm(this.totalMs)
  }

  /** Which phase ran out, when it was this deadline (not the caller's signal) that fired. */
  get expired(): 'headers' | 'body' | undefined {
    return this.expiredPhase
  }

  get callerAborted(): boolean {
    return this.parent?.aborted === true
  }

  elapsedMs(): number {
    return Date.now() - this.started
  }

  /** The error to report for an expired deadline: which host, what was slow, and the budget it had. */
  error(what: string, host: string, detail = ''): DeadlineError {
    const s = (ms: number): string => `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`
    const phase = this.expiredPhase === 'headers'
      ? `${host} sent no response within ${s(this.budget.timeoutMs)}`
      : `${host} was too slow sending the response body${detail ? ` (${detail})` : ''}: not done within ${s(this.totalMs)}`
    return new DeadlineError(`${what}: ${phase} (--request-timeout ${s(this.budget.timeoutMs)})`)
  }

  clear(): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
    this.parent?.removeEventListener('abort', this.onParentAbort)
  }

  private totalFor(bytes: number): number {
    return this.budget.timeoutMs + Math.ceil((bytes / this.budget.minBytesPerSec) * 1000)
  }

  private arm(ms: number): void {
    if (this.timer) clearTimeout(this.timer)
    const left = Math.max(0, this.started + ms - Date.now())
    this.timer = setTimeout(() => {
      this.expiredPhase = this.headersArrived ? 'body' : 'headers'
      this.controller.abort(new Error('request deadline'))
    }, left)
    this.timer.unref?.()
  }
}
