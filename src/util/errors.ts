/**
 * Every error cnaifs raises on purpose is a CnaifsError with a code from this closed list. The CLI maps codes
 * to exit codes (src/cli/exit-codes.ts) and the FUSE adapter to errnos (src/fuse/errno.ts); both maps are
 * `Record<ErrorCode, number>`, so adding a code without deciding how it surfaces does not compile.
 * Messages name what was wrong (the registry, blob, file or option), never a credential.
 */
export const ERROR_CODES = [
  /** The user gave something unusable: a bad reference, option or path. */
  'EUSAGE',
  /** Credentials missing or refused by a registry or token service. */
  'EAUTH',
  /** A repository, tag, blob or path does not exist. */
  'ENOTFOUND',
  /** A registry could not be reached, or kept failing after every retry. */
  'EUNREACHABLE',
  /** A deadline ran out: a read's, or a request's total time. */
  'ETIMEDOUT',
  /** A registry answered with a status or document we cannot use. */
  'EREGISTRY',
  /** A manifest, config, tar or persisted file is malformed. */
  'EFORMAT',
  /** Bytes did not hash to the digest that names them (a manifest, a small blob, a downloaded file). */
  'EDIGEST',
  /** A cached blob's content failed verification: the registry served wrong bytes. */
  'ECORRUPT',
  /** A layer kind or format cnaifs cannot serve. */
  'EUNSUPPORTED',
  /** A compressed layer could not be decompressed. */
  'EDECOMPRESS',
  /** The cache's disk is full and the data cannot be kept anywhere else. */
  'ENOSPC',
  /** An I/O failure with nothing more specific to say. */
  'EIO',
  /** A caller broke a contract (bad range, bad handle, use before init). */
  'EINVAL',
  /** The component was closed (daemon shutting down). */
  'ECLOSED',
  /** A blob is not completely cached (cache verify of a partial blob). */
  'EINCOMPLETE',
  /** Mounting or unmounting failed. */
  'EMOUNT',
  /** FUSE is not usable here (/dev/fuse, fusermount, the libfuse 3 addon). */
  'ENOFUSE',
  /** Something is busy: a mount with open files, a daemon that will not stop. */
  'EBUSY',
  /** A daemon's control socket answered badly, or no daemon serves a mount point. */
  'EDAEMON',
  /** A prefetch requested through a daemon failed. */
  'EPREFETCH',
  /** A registry redirected to something cnaifs will not follow (file:, data:, a target refusing access). */
  'EREDIRECT',
  /** registries.conf blocks the registry. */
  'EBLOCKED',
  /** The node's registry configuration (hosts.toml, registries.conf) leaves no host to use, or is malformed. */
  'ECONFIG',
] as const

export type ErrorCode = (typeof ERROR_CODES)[number]

export class CnaifsError extends Error {
  readonly code: ErrorCode
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
    this.name = new.target.name
  }
}

/** The user gave us something unusable: a bad reference, option or path. */
export class UsageError extends CnaifsError {
  constructor(message: string) {
    super('EUSAGE', message)
  }
}

/** A document or archive from the registry is malformed or not what it claims to be. */
export class FormatError extends CnaifsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('EFORMAT', message, options)
  }
}

/** Bytes did not hash to the digest that names them. */
export class DigestMismatchError extends CnaifsError {
  constructor(what: string, expected: string, actual: string) {
    super('EDIGEST', `${what}: digest mismatch: expected ${expected}, got ${actual}`)
  }
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && (ERROR_CODES as readonly string[]).includes(value)
}

/**
 * The code of any error: a CnaifsError's own, a Node system error's when it is one of ours (ENOSPC, EIO…),
 * otherwise EIO. Used where an error crosses a boundary (a worker thread, the FUSE adapter).
 */
export function errorCodeOf(err: unknown): ErrorCode {
  if (err instanceof CnaifsError) return err.code
  const code = (err as { code?: unknown } | undefined)?.code
  if (code === 'ENOSPC' || code === 'EDQUOT') return 'ENOSPC'
  return isErrorCode(code) ? code : 'EIO'
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message
  return String(err)
}
