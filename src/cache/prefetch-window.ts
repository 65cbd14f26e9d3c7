/**
 * Sequential read detection for one open file, and the read-ahead window it earns (mountpoint-s3's
 * prefetcher): the window starts small and doubles while reads stay sequential, so a scan soon has many
 * parts in flight while a random reader fetches only what it reads.
 *
 * - A read is sequential when it starts where the previous one ended, or — while a run is going — within
 *   a tolerance of the highest end seen: the kernel's readahead keeps several reads in flight and they reach
 *   us in any order. The first read of a file counts as sequential when it starts at offset 0 (a whole-file
 *   scan is by far the commonest start).
 * - The window is capped by maxWindowBytes and by runLookaheadFactor × the bytes the current run has read
 *   (never below initialWindowBytes), so one 1 MiB pread in the middle of a file does not fetch 64 MiB ahead.
 * - A run that starts in the middle of a file earns a window only once it has read minRunBytes: an mmap page
 *   fault arrives as the kernel's readahead window around the page, in consecutive requests (128 KiB each on
 *   libfuse 2), which is not a scan and must not fetch the blocks after it.
 */
export interface WindowSettings {
  initialWindowBytes: number
  maxWindowBytes: number
  runLookaheadFactor: number
  outOfOrderToleranceBytes: number
  /** Bytes a run started mid-file must read before it earns a window (0: at once). */
  minRunBytes: number
}

export class SequentialWindow {
  /** File offset where the run's highest read ended; undefined before the first read. */
  private frontier: number | undefined
  private window = 0
  private runBytes = 0
  /** The current run began at the file's start (a scan): it earns its window at once. */
  private runFromStart = true

  constructor(private readonly s: WindowSettings) {}

  /** The current window in bytes (0 outside a sequential run). */
  get size(): number {
    return this.window
  }

  /** Whether a read at `offset` would continue the run (without recording it). */
  peek(offset: number): boolean {
    const frontier = this.frontier ?? 0
    // Before a window exists, reads within the kernel-readahead-sized minRunBytes of the frontier continue
    // the run too (the kernel's parallel requests arrive in any order); such a run still has to read
    // minRunBytes before it earns a window, so scattered readers never do.
    const tolerance = Math.min(this.s.outOfOrderToleranceBytes, Math.max(2 * this.window, this.s.minRunBytes))
    return offset === frontier || Math.abs(offset - frontier) <= tolerance
  }

  /** Records a read of [offset, end); returns the file range to read ahead, if the read was sequential. */
  onRead(offset: number, end: number): { from: number; to: number } | undefined {
    const frontier = this.frontier ?? 0
    const sequential = this.peek(offset)
    this.frontier = sequential ? Math.max(frontier, end) : end
    if (!sequential) {
      this.window = 0
      this.runBytes = end - offset
      this.runFromStart = offset < this.s.minRunBytes
      return undefined
    }
    this.runBytes += end - offset
    if (!this.runFromStart && this.runBytes < this.s.minRunBytes) return undefined
    const grown = this.window ? Math.min(this.window * 2, this.s.maxWindowBytes) : Math.min(this.s.initialWindowBytes, this.s.maxWindowBytes)
    this.window = Math.min(grown, Math.max(this.s.initialWindowBytes, this.s.runLookaheadFactor * this.runBytes))
    return { from: this.frontier, to: this.frontier + this.window }
  }
}
