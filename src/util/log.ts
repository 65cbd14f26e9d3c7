import { pino, type Logger } from 'pino'
import { SafeLogDestination, trackDestination } from './log-destination.js'

export type { Logger }

/**
 * Structured JSON logs on stderr (or another fd), through a destination that drops and counts the lines it
 * cannot write instead of throwing, so a full log disk never takes a daemon down (see log-destination.ts).
 * Credentials can reach a log only through an object field, so every field that could carry one is redacted
 * by path; messages are written by us and never include secrets.
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
    trackDestination(new SafeLogDestination(destination)),
  )
}

/** A logger that drops everything: the default for library use and unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' })
}
