import { CnaifsError, type ErrorCode } from '../util/errors.js'

/** The registry answered with a status we cannot use. */
export class RegistryError extends CnaifsError {
  readonly status: number
  constructor(message: string, status: number, code: ErrorCode = 'EREGISTRY') {
    super(code, message)
    this.status = status
  }
}

export class NotFoundError extends RegistryError {
  constructor(message: string) {
    super(message, 404, 'ENOTFOUND')
  }
}

/** Credentials missing or refused. The message names the registry and repository, never the secret. */
export class AuthError extends RegistryError {
  constructor(message: string, status = 401) {
    super(message, status, 'EAUTH')
  }
}

/** The registry could not be reached or kept failing after every retry. */
export class UnreachableError extends CnaifsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('EUNREACHABLE', message, options)
  }
}

/** A deadline given by the caller (for example a FUSE read's timeout) ran out. */
export class DeadlineError extends CnaifsError {
  constructor(message: string) {
    super('ETIMEDOUT', message)
  }
}
