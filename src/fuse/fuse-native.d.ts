/**
 * Minimal types for fuse-native 2.2.6 (a CommonJS module without its own types), covering only what
 * src/fuse uses. Callback conventions (from node_modules/fuse-native/index.js):
 *  - every callback's first argument is 0 or a negative errno (Fuse.ENOENT etc.);
 *  - `read`/`write` instead pass the byte count (>= 0) or a negative errno as that first argument;
 *  - the value, if any, follows (stat object, names, fd, link target, xattr Buffer).
 */
declare module 'fuse-native' {
  namespace Fuse {
    /** Times may be Dates or epoch milliseconds (index.js toDateMS). All fields are packed as uint32 (size, blocks and times as two). */
    interface Stat {
      mode: number
      uid: number
      gid: number
      size: number
      dev?: number
      nlink: number
      ino: number
      rdev?: number
      blksize?: number
      blocks?: number
      atime: Date | number
      mtime: Date | number
      ctime: Date | number
    }

    /** Every field is packed as a uint32. */
    interface Statfs {
      bsize: number
      frsize: number
      blocks: number
      bfree: number
      bavail: number
      files: number
      ffree: number
      favail: number
      fsid: number
      flag: number
      namemax: number
    }

    type Done = (errno: number) => void
    type DoneWith<T> = (errno: number, value?: T) => void

    interface Operations {
      init?(cb: Done): void
      error?(cb: Done): void
      access?(path: string, mode: number, cb: Done): void
      statfs?(path: string, cb: DoneWith<Statfs>): void
      getattr?(path: string, cb: DoneWith<Stat>): void
      /** Only switches the op on: fuse-native 2.2.6 answers fgetattr by calling ops.getattr(path). */
      fgetattr?(path: string, fd: number, cb: DoneWith<Stat>): void
      flush?(path: string, fd: number, cb: Done): void
      fsync?(path: string, datasync: number, fd: number, cb: Done): void
      fsyncdir?(path: string, datasync: number, fd: number, cb: Done): void
      /** `stats`, when given, must be as long as `names` (else it is ignored). */
      readdir?(path: string, cb: (errno: number, names?: string[], stats?: Stat[]) => void): void
      truncate?(path: string, size: number, cb: Done): void
      ftruncate?(path: string, fd: number, size: number, cb: Done): void
      utimens?(path: string, atime: number, mtime: number, cb: Done): void
      readlink?(path: string, cb: DoneWith<string>): void
      chown?(path: string, uid: number, gid: number, cb: Done): void
      chmod?(path: string, mode: number, cb: Done): void
      mknod?(path: string, mode: number, dev: number, cb: Done): void
      setxattr?(path: string, name: string, value: Buffer, position: number, flags: number, cb: Done): void
      /** A null/undefined value means ENODATA (index.js answers -61 itself). */
      getxattr?(path: string, name: string, position: number, cb: (errno: number, value?: Buffer | null) => void): void
      listxattr?(path: string, cb: (errno: number, names?: string[]) => void): void
      removexattr?(path: string, name: string, cb: Done): void
      /** The fd (a uint32; 0 means "no handle") goes back as the value. */
      open?(path: string, flags: number, cb: DoneWith<number>): void
      opendir?(path: string, flags: number, cb: DoneWith<number>): void
      /** `buffer` points into libfuse's memory and is detached once cb runs: never touch it afterwards. */
      read?(path: string, fd: number, buffer: Buffer, length: number, position: number, cb: (bytesOrErrno: number) => void): void
      write?(path: string, fd: number, buffer: Buffer, length: number, position: number, cb: (bytesOrErrno: number) => void): void
      release?(path: string, fd: number, cb: Done): void
      releasedir?(path: string, fd: number, cb: Done): void
      create?(path: string, mode: number, cb: DoneWith<number>): void
      unlink?(path: string, cb: Done): void
      rename?(src: string, dest: string, cb: Done): void
      link?(src: string, dest: string, cb: Done): void
      symlink?(src: string, dest: string, cb: Done): void
      mkdir?(path: string, mode: number, cb: Done): void
      rmdir?(path: string, cb: Done): void
    }

    interface Options {
      /**
       * Per-op deadline in ms after which fuse-native itself answers ETIMEDOUT (default 15000). `false`
       * disables it; an object gives per-op values: `{ default: ms, read: false, ... }`.
       */
      timeout?: number | false | ({ default?: number } & { [op: string]: number | false | undefined })
      /** Before mounting, `fusermount -uz` the mountpoint if stat(mnt/test) fails with ENOTCONN. */
      force?: boolean
      mkdir?: boolean
      debug?: boolean
      allowOther?: boolean
      allowRoot?: boolean
      autoUnmount?: boolean
      defaultPermissions?: boolean
      maxRead?: number
      fsname?: string
      subtype?: string
      kernelCache?: boolean
      autoCache?: boolean
      entryTimeout?: number
      attrTimeout?: number
    }

    /** What index.js hands its private `_op_*` handlers: signal(resultOrErrno, ...values). */
    type Signal = (res: number, ...rest: unknown[]) => void
  }

  class Fuse {
    constructor(mnt: string, ops: Fuse.Operations, opts?: Fuse.Options)
    readonly mnt: string
    readonly ops: Fuse.Operations
    readonly opts: Fuse.Options
    mount(cb: (err: Error | null) => void): void
    unmount(cb: (err: Error | null) => void): void
    /** Builds the single `-o a,b,c` argument handed to fuse_mount/fuse_new ('' when there are no options). */
    protected _fuseOptions(): string
    protected _op_getxattr(signal: Fuse.Signal, path: string, name: string, valueBuf: Buffer, position: number): void
    protected _op_listxattr(signal: Fuse.Signal, path: string, listBuf: Buffer): void

    /** `fusermount -uz mnt` (Linux). */
    static unmount(mnt: string, cb: (err: Error | null) => void): void

    static readonly EPERM: number
    static readonly ENOENT: number
    static readonly EIO: number
    static readonly EBADF: number
    static readonly EACCES: number
    static readonly EEXIST: number
    static readonly ENOTDIR: number
    static readonly EISDIR: number
    static readonly EINVAL: number
    static readonly EROFS: number
    static readonly ERANGE: number
    static readonly ENOSYS: number
    static readonly ENODATA: number
    static readonly ENOTCONN: number
    static readonly ETIMEDOUT: number
  }

  export = Fuse
}
