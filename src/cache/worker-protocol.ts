/**
 * Messages between the main thread (fetch-pool.ts) and the fetch workers (fetch-worker.ts). Only small
 * messages cross: which blocks landed with their checksums, errors, hash results. Block bytes cross only when
 * the disk could not take them (then they are served from memory), always by transfer, never by copy.
 */
import type { RegistryClientConfig, RegistryObserver } from '../registry/client.js'
import type { ImageReference } from '../registry/reference.js'
import type { ErrorCode } from '../util/errors.js'

export interface WorkerSettings {
  client: RegistryClientConfig
  blockSize: number
}

export type FetchPurpose = 'read' | 'prefetch'

export type ToWorker =
  /** GET blob bytes [offset, offset+length) into the data file at `path` (block-aligned range). */
  | { t: 'fetch'; id: number; reference: ImageReference; digest: string; blobSize: number; offset: number; length: number; path: string; purpose: FetchPurpose }
  /** Write bytes made in the main thread (block-aligned) into the data file and hash their blocks. */
  | { t: 'store'; id: number; path: string; blobSize: number; offset: number; data: Uint8Array }
  /** Read blocks back from the data file and compare each with its expected checksum (block-checksum.ts). */
  | { t: 'check'; id: number; path: string; blobSize: number; blocks: number[]; checksums: number[] }
  /** Extend this worker's running sha256 of the blob up to byte `to` (reading the data file). */
  | { t: 'prefix'; id: number; digest: string; path: string; blobSize: number; to: number }
  | { t: 'abort'; id: number }
  /** Tell when the fetch has written its range contiguously up to `position` (a reader waits for those bytes). */
  | { t: 'watch'; id: number; position: number }
  /** The blob's files are gone or about to be: close its fds and drop its running hash. */
  | { t: 'forget'; path: string; digest: string }
  /** A redirect target another worker learned (or dropped). */
  | { t: 'redirect'; digest: string; url: string | undefined }

export type FromWorker =
  /**
   * Block `block` is complete, with its checksum. Without `memory` it is in the data file; with it the disk
   * refused it and these are its bytes.
   */
  | { t: 'landed'; id: number; block: number; checksum: number; memory?: Uint8Array }
  | { t: 'done'; id: number }
  /** The server answered the fetch with the whole blob: every block of it will land through this fetch. */
  | { t: 'whole'; id: number }
  /** The fetch's range is in the data file from its start up to `at` (answers a watch). */
  | { t: 'reached'; id: number; at: number }
  | { t: 'failed'; id: number; error: WireError }
  | { t: 'checked'; id: number; ok: Uint8Array }
  /** The running hash covers [0, at); `digest` is set when it reached the blob's end. */
  | { t: 'prefixed'; id: number; at: number; digest?: string }
  /** A write into a data file failed (the job goes on in memory). */
  | { t: 'write-error'; path: string; error: WireError }
  | { t: 'redirect'; digest: string; url: string | undefined }
  | { t: 'response'; info: Parameters<NonNullable<RegistryObserver['onResponse']>>[0] }

/** An error as it crosses a thread: enough to rebuild the CnaifsError class the CLI and FUSE map. */
export interface WireError {
  code: ErrorCode
  message: string
  /** HTTP status for registry errors. */
  status?: number
}
