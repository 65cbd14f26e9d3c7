/**
 * Contracts between the block cache (this folder), the layers below it (registry reads) and the FUSE adapter
 * above it. Kept in one small file so each side can be built and tested alone.
 */

/** A blob the cache can hold blocks of: content-addressed, so blocks are shared by every model using it. */
export interface BlobRef {
  digest: string // sha256:…
  size: number
}

/** Reads `length` bytes at `offset` of a blob from the network (a ranged GET). Never asked past `size`. */
export type BlobRangeFetcher = (blob: BlobRef, offset: number, length: number, signal: AbortSignal) => Promise<Buffer>

/** A regular file's bytes: `size` bytes at `offset` of one blob. */
export interface FileExtent {
  blob: BlobRef
  offset: number
  size: number
}

/** Per-open-file state kept by the reader (sequential-read detection for prefetch). */
export interface ReadHandle {
  readonly extent: FileExtent
}

/** What the FUSE adapter calls to read file contents. */
export interface FileContentReader {
  open(extent: FileExtent): ReadHandle
  /** Reads up to `length` bytes at file offset `offset` (short only at end of file). Rejects within the read timeout. */
  read(handle: ReadHandle, offset: number, length: number): Promise<Buffer>
  release(handle: ReadHandle): void
  /** Bytes of this file present in the local cache (memory or disk). */
  cachedBytes(extent: FileExtent): number
}
