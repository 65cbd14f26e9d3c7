/**
 * Every tunable default of cnaifs, in one typed place. Layers take their settings as explicit options from
 * the composition root (src/daemon/data-path.ts) and fall back to these; the CLI's option defaults read
 * them too, so `--help`, the code and the docs cannot disagree.
 */
import { availableParallelism } from 'node:os'

const KiB = 1024
const MiB = 1024 * KiB

export const DEFAULTS = {
  cache: {
    /** Cache block: the unit of presence, fetching and checking (also the FUSE request size on fuse3). */
    blockBytes: 1 * MiB,
    /** Largest single ranged GET: big enough to amortise a request, small enough to retry cheaply. */
    fetchPartBytes: 8 * MiB,
    /** Blocks landed in a blob file are made durable (fdatasync, then recorded in its map) this often. */
    durabilityIntervalMs: 1000,
    /** …or as soon as this many bytes wait to be made durable. */
    durabilityPendingBytes: 256 * MiB,
    /** The map file's mtime (the persisted recency for eviction) is bumped at most this often. */
    touchIntervalMs: 60_000,
    /** Failed disk writes are reported at most once per this interval (with a count). */
    writeErrorReportMs: 30_000,
    /** Check jobs (re-hash of blocks on disk before their first use after a start) in flight at once. */
    checkConcurrency: 4,
  },
  fetch: {
    /** Worker threads doing ranged GETs, disk writes and hashing. */
    workers: Math.min(4, Math.max(2, availableParallelism())),
  },
  read: {
    /** A read that cannot be served within this fails with EIO. */
    timeoutMs: 30_000,
    /** Memory for prefetch in flight and for blocks kept in memory when the disk cannot take them. */
    memoryBudgetBytes: 256 * MiB,
    /** Sequential read-ahead window: starts here, doubles while reads stay sequential. */
    initialWindowBytes: 1 * MiB,
    maxWindowBytes: 64 * MiB,
    /** The window is at most this many times the bytes the current sequential run has read. */
    runLookaheadFactor: 4,
    /** How far out of order the kernel's parallel reads may arrive and still continue a run. */
    outOfOrderToleranceBytes: 16 * MiB,
    /**
     * A run that starts mid-file earns read-ahead only after this many bytes: more than the kernel's own
     * readahead window (fuse.readaheadBytes), which is what one mmap page fault asks for.
     */
    minRunBytes: 2 * MiB,
    /** A failed read is answered with the same error for overlapping reads of its handle for this long. */
    failedReadReplayMs: 1000,
  },
  fuse: {
    /** The model never changes under a mount: the kernel may cache names, attributes and misses for long. */
    cacheTimeoutS: 3600,
    /**
     * Kernel readahead of the mount. Small on purpose: an mmap page fault reads this much around the page,
     * so a large value turns a few scattered tensor reads into most of a file (at 16 MiB, 20 values of a
     * 256 MiB file fetched 220 MiB). Streaming speed comes from cnaifs's own prefetch window; this also caps
     * the size of buffered read requests (min(readahead, 1 MiB)), so 512 KiB keeps requests large while a
     * fault reads at most one cache block more than a pread of the same bytes.
     */
    readaheadBytes: 512 * KiB,
    maxBackground: 64,
    congestionThreshold: 48,
  },
  registry: {
    requestTimeoutMs: 30_000,
    retries: 4,
    connectionsPerOrigin: 32,
  },
} as const

export type Defaults = typeof DEFAULTS
