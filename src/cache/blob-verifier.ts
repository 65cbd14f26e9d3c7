/**
 * Verification of one blob against its digest: a running sha256 over the blob's bytes from its start, kept by
 * one fetch worker (a hash's state cannot move between threads) and extended whenever the blocks after it are
 * in the data file. Sequential reads keep it just behind the data, so completing a blob costs hashing its last
 * blocks, not re-reading it all. The digest is known once the hash reaches the blob's end.
 */
import type { BlockMap } from './block-map.js'
import { BlockState } from './block-map.js'

export interface PrefixHasher {
  /** Extends the running hash to byte `to`; `digest` once it reached the blob's end. */
  prefix(digest: string, path: string, blobSize: number, to: number): Promise<{ at: number; digest?: string }>
  /** Drops the running hash (it covered bytes that are no longer trusted). */
  reset(digest: string, path: string): void
}

export type VerifyOutcome = 'verified' | 'mismatch'

export class BlobVerifier {
  /** Blob bytes [0, at) are in the running hash. */
  private at = 0
  private running = false
  private again = false
  /** Bumped by invalidate(): a hash step started before then is stale when it returns. */
  private generation = 0
  private waiters: Array<() => void> = []

  constructor(
    private readonly digest: string,
    private readonly path: string,
    private readonly map: BlockMap,
    private readonly hasher: PrefixHasher,
    /** Called with the outcome once the hash reaches the end. */
    private readonly onDone: (outcome: VerifyOutcome) => void,
    private readonly onError: (err: unknown) => void,
  ) {}

  /** New blocks are in the data file: extend the running hash as far as the blob is contiguous. */
  advance(): void {
    if (this.map.verified) return this.wake()
    if (this.running) { this.again = true; return }
    const to = this.contiguousEnd()
    if (to <= this.at) return
    this.running = true
    const generation = this.generation
    this.hasher.prefix(this.digest, this.path, this.map.blob.size, to).then(
      (r) => {
        if (generation !== this.generation) return
        this.at = r.at
        if (r.digest !== undefined) {
          this.at = 0
          this.onDone(r.digest === this.digest ? 'verified' : 'mismatch')
          this.wake()
        }
      },
      (err: unknown) => {
        this.at = 0
        this.hasher.reset(this.digest, this.path)
        this.onError(err)
      },
    ).finally(() => {
      this.running = false
      if (this.again) { this.again = false; this.advance() }
    })
  }

  /** Block `n` is being replaced: if the running hash covered it, start over. */
  invalidate(n: number): void {
    if (n * this.map.blockSize >= this.at && !this.running) return
    this.generation++
    this.at = 0
    this.hasher.reset(this.digest, this.path)
  }

  /** Resolves at the next outcome (or at once if the blob is verified). */
  settled(): Promise<void> {
    if (this.map.verified) return Promise.resolve()
    return new Promise((resolve) => this.waiters.push(resolve))
  }

  private wake(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) w()
  }

  /** The end of the run of blocks in the data file that starts at the running hash's position. */
  private contiguousEnd(): number {
    const B = this.map.blockSize
    let n = Math.floor(this.at / B)
    while (n < this.map.blockCount && this.map.state(n) !== BlockState.Absent) n++
    return Math.min(n * B, this.map.blob.size)
  }
}
