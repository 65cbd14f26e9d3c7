import { CnaifsError } from '../util/errors.js'

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

export function exitCodeFor(err: unknown): number {
  if (!(err instanceof CnaifsError)) return EXIT.failure
  switch (err.code) {
    case 'EUSAGE': case 'EBLOCKED': case 'ECONFIG': return EXIT.usage
    case 'EAUTH': return EXIT.auth
    case 'ENOTFOUND': return EXIT.notFound
    case 'EUNREACHABLE': case 'ETIMEDOUT': return EXIT.unreachable
    case 'EFORMAT': case 'EDIGEST': case 'ECORRUPT': case 'EUNSUPPORTED': case 'EDECOMPRESS': return EXIT.badData
    default: return EXIT.failure
  }
}
