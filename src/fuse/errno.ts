/**
 * The errno a FUSE request is answered with for each error code: the truth where read(2) and friends have a
 * word for it (EACCES for refused credentials, ENOSPC, EOPNOTSUPP, EINVAL), EIO for everything that means
 * "the bytes cannot be had" (registry down or too slow, corrupt or undecodable data). Deadlines are EIO as on
 * an NFS soft mount: every program treats it as a failed read, and the log says which deadline passed.
 * Exhaustive: a new error code must be placed here to compile.
 */
import { constants } from 'node:os'
import { errorCodeOf, type ErrorCode } from '../util/errors.js'

const E = constants.errno

const ERRNO_FOR: Record<ErrorCode, number> = {
  EUSAGE: E.EINVAL,
  EAUTH: E.EACCES,
  // A blob that vanished from the registry: the file exists, its bytes cannot be had.
  ENOTFOUND: E.EIO,
  EUNREACHABLE: E.EIO,
  ETIMEDOUT: E.EIO,
  EREGISTRY: E.EIO,
  EFORMAT: E.EIO,
  EDIGEST: E.EIO,
  ECORRUPT: E.EIO,
  EUNSUPPORTED: E.EOPNOTSUPP,
  EDECOMPRESS: E.EIO,
  ENOSPC: E.ENOSPC,
  EIO: E.EIO,
  EINVAL: E.EINVAL,
  ECLOSED: E.EIO,
  EINCOMPLETE: E.EIO,
  EMOUNT: E.EIO,
  ENOFUSE: E.EIO,
  EBUSY: E.EBUSY,
  EDAEMON: E.EIO,
  EPREFETCH: E.EIO,
  EREDIRECT: E.EIO,
  EBLOCKED: E.EACCES,
  ECONFIG: E.EIO,
}

/** The (positive) errno for any error thrown below the FUSE layer. */
export function errnoFor(err: unknown): number {
  return ERRNO_FOR[errorCodeOf(err)]
}
