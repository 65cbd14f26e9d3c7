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
 */
export interface WindowSettings {
  initialWindowBytes: number
  maxWindowBytes: number
  runLookaheadFactor: number
  outOfOrderToleranceBytes: number
}

export class SequentialWindow {
  /** File offset where the run's highest read ended; undefined before the first read. */
  private frontier: number | undefined
  private window = 0
  private runBytes = 0

  constructor(private readonly s: WindowSettings) {}

  /** The current window in bytes (0 outside a sequential run). */
  get size(): number {
    return this.window
  }

  /** Whether a read at `offset` would continue the run (without recording it). */
  peek(offset: number): boolean {
    const frontier = this.frontier ?? 0
    const tolerance = Math.min(this.s.outOfOrderToleranceBytes, 2 * this.window)
    return offset === frontier || (this.window > 0 && Math.abs(offset - frontier) <= tolerance)
  }

  /** Records a read of [offset, end); returns the file range to read ahead, if the read was sequential. */
  onRead(offset: number, end: number): { from: number; to: number } | undefined {
    const frontier = this.frontier ?? 0
    const sequential = this.peek(offset)
    this.frontier = sequential ? Math.max(frontier, end) : end
    if (!sequential) {
      this.window = 0
      this.runBytes = end - offset
      return undefined
    }
    this.runBytes += end - offset
    const grown = this.window ? Math.min(this.window * 2, this.s.maxWindowBytes) : Math.min(this.s.initialWindowBytes, this.s.maxWindowBytes)
    this.window = Math.min(grown, Math.max(this.s.initialWindowBytes, this.s.runLookaheadFactor * this.runBytes))
    return { from: this.frontier, to: this.frontier + this.window }
  }
}
