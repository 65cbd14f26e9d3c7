import { writeSync } from 'node:fs'

/** How log writing has gone in this process: lines dropped because the destination failed. */
export interface LogHealth {
  droppedLines: number
  /** The error of the last failed write (e.g. "ENOSPC"), kept after writes recover. */
  lastError?: string
  lastErrorAt?: string
}

/** Attempts at a write the kernel answers with EAGAIN (a full non-blocking pipe) before the line is dropped. */
const EAGAIN_RETRIES = 100
const EAGAIN_SLEEP_MS = 1
const sleeper = new Int32Array(new SharedArrayBuffer(4))

/**
 * A pino destination that can never throw: each line is written synchronously to `fd`; a write that fails
 * (a full disk, a closed pipe, a log file on a dead mount) drops that line and counts it, and the next write
 * that succeeds is preceded by one line saying how many were dropped and why. A daemon whose log is on a full
 * filesystem thus keeps serving, and the operator learns what was lost once the disk has room again.
 */
export class SafeLogDestination {
  private readonly health: LogHealth = { droppedLines: 0 }
  /** Dropped since the last report line. */
  private unreported = 0
  /** A failed write left part of a line behind: the next write starts a new line first. */
  private torn = false

  constructor(private readonly fd: number) {}

  write(line: string): boolean {
    if (this.unreported > 0) {
      const notice = JSON.stringify({ level: 40, time: new Date().toISOString(), pid: process.pid, droppedLines: this.unreported, error: this.health.lastError, msg: `${this.unreported} log lines were dropped: the log could not be written (${this.health.lastError})` }) + '\n'
      if (!this.tryWrite(notice)) return this.drop()
      this.unreported = 0
    }
    return this.tryWrite(line) || this.drop()
  }

  stats(): LogHealth {
    return { ...this.health }
  }

  private drop(): boolean {
    this.health.droppedLines++
    this.unreported++
    return true // pino must not wait for a 'drain' that would never come
  }

  private tryWrite(text: string): boolean {
    let buf = Buffer.from(this.torn ? '\n' + text : text)
    const whole = buf.length
    let again = 0
    while (buf.length > 0) {
      try {
        const n = writeSync(this.fd, buf)
        buf = buf.subarray(n)
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? 'EIO'
        if (code === 'EAGAIN' && again++ < EAGAIN_RETRIES) {
          Atomics.wait(sleeper, 0, 0, EAGAIN_SLEEP_MS)
          continue
        }
        this.health.lastError = code
        this.health.lastErrorAt = new Date().toISOString()
        if (buf.length < whole) this.torn = true
        return false
      }
    }
    this.torn = false
    return true
  }
}

const destinations: SafeLogDestination[] = []

/** Registers a destination so that `logHealth()` reports it. */
export function trackDestination(d: SafeLogDestination): SafeLogDestination {
  destinations.push(d)
  return d
}

/** Dropped log lines of every logger of this process (for `cnaifs status` and metrics). */
export function logHealth(): LogHealth {
  const out: LogHealth = { droppedLines: 0 }
  for (const d of destinations) {
    const s = d.stats()
    out.droppedLines += s.droppedLines
    if (s.lastErrorAt && (!out.lastErrorAt || s.lastErrorAt > out.lastErrorAt)) { out.lastError = s.lastError; out.lastErrorAt = s.lastErrorAt }
  }
  return out
}
