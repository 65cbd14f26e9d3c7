/**
 * Error classes shared by every layer. Each carries a stable `code` so the CLI can map it to an exit code
 * and the FUSE adapter to an errno, and a message that names what was wrong (never a credential).
 */
export class CnaifsError extends Error {
  readonly code: string
  constructor(code: string, message: string, options?: { cause?: unknown }) {
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

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message
  return String(err)
}
