/**
 * Contracts between the cache (this folder), the layers below it (registry reads, compressed views) and the
 * FUSE adapter above it. Kept in one small file so each side can be built and tested alone.
 */
import type { ImageReference } from '../registry/reference.js'

/** A blob the cache can hold blocks of: content-addressed, so blocks are shared by every model using it. */
export interface BlobRef {
  digest: string // sha256:…
  size: number
}

/** A regular file's bytes: `size` bytes at `offset` of one blob. */
export interface FileExtent {
  blob: BlobRef
  offset: number
  size: number
}

/**
 * Bytes of a cache file: the FUSE binding replies from it without copying through JavaScript (or, on the
 * fuse-native fallback, preads it into the kernel's buffer). The fd stays open while the handle that read
 * it is open.
 */
export interface CachedRange {
  fd: number
  position: number
  length: number
}

/** A read's answer: a cache-file range, or bytes in memory (blocks the disk could not take). */
export type ReadResult = CachedRange | Buffer

/** Where a blob's missing blocks come from. */
export type BlobSource =
  /** Ranged GETs of the blob from the registry of `reference`, run in the fetch workers. */
  | { kind: 'registry'; reference: ImageReference }
  /** Bytes made in this process (the uncompressed content of a compressed layer). */
  | { kind: 'produced'; produce(offset: number, length: number, signal: AbortSignal): Promise<Buffer> }

/** Per-open-file state kept by the reader. */
export interface FileReadHandle {
  readonly extent: FileExtent
}

/** What the FUSE adapter calls to read file contents: open a file → read offset/length → range or Buffer. */
export interface FileDataPath {
  open(extent: FileExtent): FileReadHandle
  /**
   * Up to `length` bytes at file offset `offset` (short only at end of file). Returns synchronously when the
   * bytes are ready; otherwise a Promise that settles within the read deadline.
   */
  read(handle: FileReadHandle, offset: number, length: number): ReadResult | Promise<ReadResult>
  release(handle: FileReadHandle): void
  /** Bytes of this file present in the local cache. */
  cachedBytes(extent: FileExtent): number
}

export function isCachedRange(r: ReadResult): r is CachedRange {
  return !Buffer.isBuffer(r)
}
