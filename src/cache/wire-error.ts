/** Errors crossing between the fetch workers and the main thread keep their class and code. */
import { AuthError, DeadlineError, NotFoundError, RegistryError, UnreachableError } from '../registry/errors.js'
import { CnaifsError, errorCodeOf, errorMessage } from '../util/errors.js'
import type { WireError } from './worker-protocol.js'

export function toWire(err: unknown): WireError {
  const status = err instanceof RegistryError ? err.status : undefined
  return { code: errorCodeOf(err), message: errorMessage(err), ...(status !== undefined ? { status } : {}) }
}

export function fromWire(w: WireError): CnaifsError {
  switch (w.code) {
    case 'EAUTH': return new AuthError(w.message, w.status)
    case 'ENOTFOUND': return new NotFoundError(w.message)
    case 'EUNREACHABLE': return new UnreachableError(w.message)
    case 'ETIMEDOUT': return new DeadlineError(w.message)
    case 'EREGISTRY': return new RegistryError(w.message, w.status ?? 0)
    default: return new CnaifsError(w.code, w.message)
  }
}
