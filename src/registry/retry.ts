import { setTimeout as sleep } from 'node:timers/promises'
import { DeadlineError } from './errors.js'

/** Backoff for attempt n (0-based): 100 ms doubling, capped at 5 s, with ±25 % jitter so clients spread out. */
export function backoffMs(attempt: number): number {
  const base = Math.min(5000, 100 * 2 ** attempt)
  return Math.round(base * (0.75 + Math.random() * 0.5))
}

/** `Retry-After` is either delay-seconds or an HTTP date. Capped at 30 s: a read deadline bounds us anyway. */
export function parseRetryAfter(value: string | string[] | undefined): number | undefined {
  const v = Array.isArray(value) ? value[0] : value
  if (!v) return undefined
  if (/^\d+$/.test(v.trim())) return Math.min(30_000, Number(v.trim()) * 1000)
  const at = Date.parse(v)
  if (Number.isNaN(at)) return undefined
  return Math.max(0, Math.min(30_000, at - Date.now()))
}

/** Sleeps unless the signal fires first; a fired signal becomes a DeadlineError with `what` in it. */
export async function sleepWithin(ms: number, signal: AbortSignal | undefined, what: string): Promise<void> {
  if (signal?.aborted) throw new DeadlineError(`${what}: deadline exceeded`)
  try {
    await sleep(ms, undefined, { signal })
  } catch {
    throw new DeadlineError(`${what}: deadline exceeded`)
  }
}

/** Network-level failures worth another attempt (connection refused/reset, socket closed, timeouts). */
export function isTransientNetworkError(err: unknown): boolean {
  const code = (err as { code?: string } | undefined)?.code ?? ''
  return [
    'ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH', 'ECONNABORTED',
    'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT',
    'UND_ERR_RESPONSE_STATUS_CODE', 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH',
  ].includes(code)
}
