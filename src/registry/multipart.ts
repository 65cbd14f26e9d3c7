/** One part of a `multipart/byteranges` body: its blob position and bytes. */
export interface BytePart {
  start: number
  bytes: Buffer
}

/** The boundary of a `multipart/byteranges; boundary=…` content type, or undefined for any other type. */
export function byterangesBoundary(contentType: string | undefined): string | undefined {
  if (!contentType || !/^\s*multipart\/byteranges\s*;/i.test(contentType)) return undefined
  const m = /;\s*boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType)
  return m ? (m[1] ?? m[2]) : undefined
}

/**
 * Parses a whole `multipart/byteranges` body (RFC 9110 §14.6). Each part's length comes from its Content-Range, so
 * binary data that happens to contain the boundary cannot cut a part short; anything malformed throws.
 */
export function parseByteranges(body: Buffer, boundary: string): BytePart[] {
  const delimiter = Buffer.from(`--${boundary}`)
  const parts: BytePart[] = []
  let pos = body.indexOf(delimiter)
  if (pos < 0) throw new Error('multipart body without its boundary')
  for (;;) {
    pos += delimiter.length
    if (body[pos] === 0x2d && body[pos + 1] === 0x2d) return parts // closing delimiter
    const headersEnd = body.indexOf('\r\n\r\n', pos)
    if (headersEnd < 0) throw new Error('multipart part without the end of its headers')
    const headers = body.toString('latin1', pos, headersEnd)
    const m = /^content-range:\s*bytes\s+(\d+)-(\d+)\/(?:\d+|\*)\s*$/im.exec(headers)
    if (!m) throw new Error('multipart part without a Content-Range')
    const start = Number(m[1])
    const length = Number(m[2]) - start + 1
    const dataStart = headersEnd + 4
    if (length < 1 || dataStart + length > body.length) throw new Error('multipart part shorter than its Content-Range')
    parts.push({ start, bytes: body.subarray(dataStart, dataStart + length) })
    pos = body.indexOf(delimiter, dataStart + length)
    if (pos < 0) throw new Error('multipart body ends without its closing boundary')
  }
}
