import { UsageError } from '../../util/errors.js'

const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** A Go duration string ("5s", "500ms", "1m30s"), as containerd's `dial_timeout` is written, in milliseconds. */
export function parseGoDuration(text: string, what: string): number {
  const t = text.trim()
  if (t === '0') return 0
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/gy
  let total = 0
  let at = 0
  let m: RegExpExecArray | null
  while ((m = re.exec(t)) !== null) {
    total += Number(m[1]) * UNIT_MS[m[2]!]!
    at = re.lastIndex
  }
  if (at === 0 || at !== t.length) throw new UsageError(`${what}: ${JSON.stringify(text)} is not a duration (write it as 5s, 500ms, 1m30s)`)
  return total
}
