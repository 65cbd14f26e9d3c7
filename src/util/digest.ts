import { createHash } from 'node:crypto'
import { FormatError } from './errors.js'

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/

export function sha256Digest(data: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex')
}

/** Only sha256 is accepted: it is what every registry and ModelPack producer writes. */
export function assertDigest(digest: string, what = 'digest'): string {
  if (!DIGEST_RE.test(digest)) throw new FormatError(`${what} is not a sha256 digest: ${JSON.stringify(digest)}`)
  return digest
}

/** A short, filesystem-safe form for file names: the hex part only. */
export function digestHex(digest: string): string {
  return assertDigest(digest).slice('sha256:'.length)
}
