/**
 * Failed writes into the cache (a full or failing disk) arrive exactly when nothing can be written, one per
 * block: they are counted, logged at most once per interval with how many there were, and the cache reports
 * itself unwritable until a write succeeds again or the interval passes without failures.
 */
import { errorMessage } from '../util/errors.js'
import type { Logger } from '../util/log.js'

export class WriteErrorReporter {
  private total = 0
  private sinceReport = 0
  private lastReportMs = -Infinity
  private lastFailureMs = -Infinity
  private lastMessage = ''

  constructor(private readonly log: Logger, private readonly intervalMs: number, private readonly now: () => number = Date.now) {}

  failed(what: string, err: unknown): void {
    this.total++
    this.sinceReport++
    this.lastFailureMs = this.now()
    this.lastMessage = `${what}: ${errorMessage(err)}`
    if (this.lastFailureMs - this.lastReportMs < this.intervalMs) return
    this.log.warn({ failures: this.sinceReport, error: this.lastMessage },
      'blob cache: cannot write to the cache disk; blocks are kept in memory and fetched again as needed')
    this.lastReportMs = this.lastFailureMs
    this.sinceReport = 0
  }

  /** A write succeeded (the disk takes data again). */
  succeeded(): void {
    this.lastFailureMs = -Infinity
  }

  get failures(): number {
    return this.total
  }

  /** False while writes are failing (a failure within the last interval). */
  get writable(): boolean {
    return this.now() - this.lastFailureMs >= this.intervalMs
  }

  get lastError(): string | undefined {
    return this.total ? this.lastMessage : undefined
  }
}
