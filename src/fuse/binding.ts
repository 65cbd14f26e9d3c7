/**
 * The seam between cnaifs's filesystem (src/fuse/adapter.ts) and a FUSE library. Two bindings implement it:
 * our own N-API addon on libfuse 3's low-level API (fuse3-binding.ts, native/) and fuse-native on libfuse 2
 * (fuse-native-binding.ts), so the adapter is written once.
 *
 * The interface is inode-based, like libfuse's low-level API: the fuse-native binding translates its paths
 * into inodes by looking each component up from ROOT_INO.
 *
 * Contract for every operation:
 * - It returns its value or a Promise of it; it signals an error by throwing (or rejecting with) a
 *   FuseErrno. Anything else thrown is answered with EIO (and reported through FuseMountOptions.onUnexpected).
 * - The binding answers every request exactly once, also when the session ends while requests are waiting
 *   (those are answered with EIO by the binding, and a later answer from the filesystem is dropped).
 * - Operations that modify anything never reach the filesystem: the bindings answer them with EROFS.
 */

/** The root directory's inode number (FUSE_ROOT_ID). */
export const ROOT_INO = 1

/** Which FUSE library serves a mount. */
export type BindingName = 'fuse3' | 'fuse-native'

export interface FuseAttr {
  ino: number
  /** File type and permission bits, as st_mode (S_IFREG | 0o644 …). */
  mode: number
  nlink: number
  uid: number
  gid: number
  size: number
  /** 512-byte blocks. */
  blocks: number
  blksize: number
  atimeMs: number
  mtimeMs: number
  ctimeMs: number
  /**
   * How long the kernel may cache this node's attributes and name, overriding the mount's attr/entry
   * timeouts (0 for a file whose content changes, such as the status document).
   */
  cacheTimeoutS?: number
}

/** What open() may answer instead of a bare handle. */
export interface FuseOpenReply {
  fh: number
  /** Keep the page cache of earlier opens (default true: content is immutable). */
  keepCache?: boolean
  /** Bypass the page cache for this open (reads go to the filesystem as the program issues them). */
  directIo?: boolean
}

export interface FuseDirEntry {
  name: string
  attr: FuseAttr
}

export interface FuseStatfs {
  bsize: number
  frsize: number
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
  favail: number
  namemax: number
}

/**
 * A read answered from a file: the binding has libfuse read (or splice) `length` bytes at `position` of
 * `fd` straight into the reply, so the bytes never enter JavaScript. The range must lie within the file's
 * data (a short file would make a short read). The fd must stay open until release() of the handle the read
 * was made on has been called: the kernel sends RELEASE only after every read of that open file has been
 * answered.
 */
export interface FileRange {
  fd: number
  position: number
  length: number
}

/** What a read answers: bytes in memory, or a range of a file. Shorter than asked only at end of file. */
export type ReadReply = Buffer | FileRange

export function isFileRange(r: ReadReply): r is FileRange {
  return !Buffer.isBuffer(r)
}

/** An errno answer (positive errno number, e.g. 2 for ENOENT). */
export class FuseErrno extends Error {
  constructor(readonly errno: number, message?: string) {
    super(message ?? `errno ${errno}`)
    this.name = 'FuseErrno'
  }
}

type MaybePromise<T> = T | Promise<T>

/** The operations a filesystem implements; see the contract above. */
export interface FuseOps {
  /** The child `name` of directory `parent`; counts one lookup of the child (see forget). ENOENT if absent. */
  lookup(parent: number, name: string): MaybePromise<FuseAttr>
  /**
   * The kernel dropped `nlookup` lookups of `ino`. Never answered (FUSE has no reply for it). On fuse3 every
   * entry a readdir listing hands the kernel (other than '.' and '..') may count one lookup too (readdirplus),
   * balanced by forgets like lookup's; at unmount the kernel drops all lookups without forgets.
   */
  forget?(ino: number, nlookup: number): void
  getattr(ino: number): MaybePromise<FuseAttr>
  readlink(ino: number): MaybePromise<string>
  /** Opens a regular file read-only (the binding refuses write access with EROFS first); returns a handle > 0. */
  open(ino: number, flags: number): MaybePromise<number | FuseOpenReply>
  /** Up to `length` bytes at `offset` (fewer only at end of file; an empty Buffer past it). */
  read(ino: number, fh: number, offset: number, length: number): MaybePromise<ReadReply>
  release(ino: number, fh: number): MaybePromise<void>
  /** Opens a directory; returns a handle > 0 (0 is allowed when the filesystem keeps no state). */
  opendir(ino: number): MaybePromise<number>
  /** The whole listing, '.' and '..' first. The binding pages it for the kernel (readdir or readdirplus). */
  readdir(ino: number, fh: number): MaybePromise<FuseDirEntry[]>
  releasedir(ino: number, fh: number): MaybePromise<void>
  /** The value of an extended attribute; ENODATA if the node has none of that name. */
  getxattr(ino: number, name: string): MaybePromise<Buffer>
  listxattr(ino: number): MaybePromise<string[]>
  statfs(): MaybePromise<FuseStatfs>
  /** access(2) for `mask` (R_OK, W_OK, X_OK bits; 0 = existence). */
  access(ino: number, mask: number): MaybePromise<void>
}

export interface FuseMountOptions {
  /** Shown as the source in /proc/mounts and df: `cnaifs:<reference>`. */
  fsname: string
  /** The mount type is `fuse.<subtype>`. */
  subtype: string
  /** Let other users in (`allow_other`); as non-root it needs user_allow_other in /etc/fuse.conf. */
  allowOther: boolean
  /** How long the kernel may cache attributes, names and missing names, in seconds. */
  attrTimeoutS: number
  entryTimeoutS: number
  negativeTimeoutS: number
  /**
   * Kernel readahead for the mount in bytes (the bdi's read_ahead_kb); small, so that mmap page faults
   * read little around the faulting page: sequential streaming is cnaifs's own prefetch.
   */
  readaheadBytes: number
  /** Background requests (readahead) the kernel keeps in flight, and its congestion threshold. */
  maxBackground: number
  congestionThreshold: number
  /** Called when an operation threw something other than FuseErrno (answered EIO). */
  onUnexpected?: (op: string, err: unknown) => void
}

export interface FuseSession {
  readonly binding: BindingName
  readonly mountpoint: string
  /** Largest read the kernel sends (negotiated at FUSE_INIT): 1 MiB on fuse3, 128 KiB on fuse-native. */
  readonly maxRead: number
  /**
   * Resolves once the session is over, however it ended: our unmount(), `fusermount -u[z]`, `umount -l`, or
   * the kernel aborting the connection. Never rejects. By then every request was answered and no FuseOps
   * method is called again (an fd from a FileRange may still be read by a moment: closing it then is safe,
   * the result is dropped).
   */
  readonly ended: Promise<void>
  /**
   * Detaches the mount lazily (never EBUSY, even with files open), then ends the session: requests still
   * waiting are answered EIO and files still open fail from then on (EIO/ENOTCONN). Resolves when the session
   * has ended. (After an unmount from outside, fuse3 keeps serving files still open until they are closed;
   * fuse-native cannot tell, and ends at once.)
   */
  unmount(): Promise<void>
  /** Requests the filesystem has not answered yet. */
  pendingRequests(): number
}

export interface FuseBinding {
  readonly name: BindingName
  /** Mounts `mountpoint` (read-only, nosuid, nodev) and resolves once the kernel has finished FUSE_INIT. */
  mount(mountpoint: string, ops: FuseOps, options: FuseMountOptions): Promise<FuseSession>
}
