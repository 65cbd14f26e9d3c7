import { CnaifsError } from '../util/errors.js'

/**
 * A compressed layer could not be decompressed: bad gzip/zstd data, a truncated stream, or sizes that do not
 * match the index. The message names the layer blob. The CLI maps it to exit 6 (bad data), the mount to EIO.
 */
export class DecompressionError extends CnaifsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('EDECOMPRESS', message, options)
  }
}

/** `sha256:0123456789ab…` for messages. */
export function shortDigest(digest: string): string {
  return digest.length > 19 ? `${digest.slice(0, 19)}…` : digest
}
