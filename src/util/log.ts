import { pino, type Logger } from 'pino'

export type { Logger }

/**
 * Structured JSON logs on stderr. Credentials can reach a log only through an object field, so every field
 * that could carry one is redacted by path; messages are written by us and never include secrets.
 */
export const REDACT_PATHS = [
  'password', '*.password', 'authorization', '*.authorization', 'headers.authorization',
  '*.headers.authorization', 'token', '*.token', 'secret', '*.secret', 'identityToken', '*.identityToken',
]

export function createLogger(level: string = process.env.CNAIFS_LOG_LEVEL ?? 'info', destination: number = 2): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    pino.destination({ fd: destination, sync: true }),
  )
}

/** A logger that drops everything: the default for library use and unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' })
}

/** Removes userinfo and sensitive query parameters from a URL before it is logged or shown. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url)
    if (u.username || u.password) { u.username = ''; u.password = '' }
    for (const key of [...u.searchParams.keys()]) {
      if (/sig|signature|token|credential|secret|key/i.test(key)) u.searchParams.set(key, 'REDACTED')
    }
    return u.toString()
  } catch {
    return '[unparseable url]'
  }
}
