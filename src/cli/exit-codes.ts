import { errorCodeOf, type ErrorCode } from '../util/errors.js'

/** Exit codes, documented in the README. */
export const EXIT = {
  ok: 0,
  failure: 1,
  usage: 2,
  auth: 3,
  notFound: 4,
  unreachable: 5,
  badData: 6,
} as const

/** How each error code ends a command. Exhaustive: a new code must be placed here to compile. */
const EXIT_FOR: Record<ErrorCode, number> = {
  EUSAGE: EXIT.usage,
  EAUTH: EXIT.auth,
  ENOTFOUND: EXIT.notFound,
  EUNREACHABLE: EXIT.unreachable,
  ETIMEDOUT: EXIT.unreachable,
  EREGISTRY: EXIT.failure,
  EFORMAT: EXIT.badData,
  EDIGEST: EXIT.badData,
  ECORRUPT: EXIT.badData,
  EUNSUPPORTED: EXIT.badData,
  EDECOMPRESS: EXIT.badData,
  ENOSPC: EXIT.failure,
  EIO: EXIT.failure,
  EINVAL: EXIT.failure,
  ECLOSED: EXIT.failure,
  EINCOMPLETE: EXIT.failure,
  EMOUNT: EXIT.failure,
  ENOFUSE: EXIT.failure,
  EBUSY: EXIT.failure,
  EDAEMON: EXIT.failure,
  EPREFETCH: EXIT.failure,
  EREDIRECT: EXIT.failure,
  EBLOCKED: EXIT.usage,
  ECONFIG: EXIT.usage,
}

export function exitCodeFor(err: unknown): number {
  if (!(err instanceof Error) || !('code' in err)) return EXIT.failure
  return EXIT_FOR[errorCodeOf(err)]
}
