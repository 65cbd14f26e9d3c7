/**
 * JSON documents that carry their own checksum: `{"checksum":"sha256:…", …the document's fields…}`, where
 * the checksum is the sha256 of the document serialised without it. JSON.stringify of what JSON.parse read
 * back from our own output gives the same bytes (key order is kept, numbers print canonically), so a reader
 * can recompute it. A file torn, truncated or edited by hand fails the check instead of being half-trusted.
 */
import { sha256Digest } from './digest.js'
import { SchemaError, isPlainObject, parseJson } from './validate.js'

export const CHECKSUM_FIELD = 'checksum'

export function sealJson(doc: object): string {
  if (CHECKSUM_FIELD in doc) throw new Error(`a sealed document cannot have its own ${CHECKSUM_FIELD} field`)
  return JSON.stringify({ [CHECKSUM_FIELD]: sha256Digest(JSON.stringify(doc)), ...doc })
}

export interface Unsealed {
  doc: Record<string, unknown>
  /** False for a document without a checksum (files written before checksums existed): the caller decides. */
  sealed: boolean
}

/** The document of a sealed file, its checksum verified and removed; a wrong checksum is always refused. */
export function unsealJson(text: string): Unsealed {
  const parsed = parseJson(text)
  if (!isPlainObject(parsed)) throw new SchemaError('', 'expected a JSON object')
  const { [CHECKSUM_FIELD]: checksum, ...doc } = parsed
  if (checksum === undefined) return { doc, sealed: false }
  const actual = sha256Digest(JSON.stringify(doc))
  if (checksum !== actual) throw new SchemaError(CHECKSUM_FIELD, `does not match the content (${actual}): the file is damaged or was edited`)
  return { doc, sealed: true }
}
