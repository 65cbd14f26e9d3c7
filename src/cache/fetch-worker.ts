/**
 * A fetch worker (a worker thread): runs ranged GETs with its own registry client (its own undici Agent),
 * streams each response body straight into the blob's data file at the bytes' positions, checksums every
 * block as its bytes pass, and tells the main thread which blocks landed. It also checks blocks found on disk
 * and keeps the running sha256 of blobs for their verification. The main thread never touches fetched bytes.
 *
 * File I/O here is synchronous on purpose: this thread has nothing else to do meanwhile, a slow disk holds
 * the socket back (backpressure), and the main thread's event loop is not involved.
 */
import { createHash, type Hash } from 'node:crypto'
import { closeSync, constants, openSync, readSync, writeSync } from 'node:fs'
import { parentPort, workerData } from 'node:worker_threads'
import { RegistryClient } from '../registry/client.js'
import { BlockChecksum, blockChecksum } from './block-checksum.js'
import { toWire } from './wire-error.js'
import type { FromWorker, ToWorker, WorkerSettings } from './worker-protocol.js'

const port = parentPort
if (!port) throw new Error('fetch-worker.ts runs as a worker thread')
const settings = workerData as WorkerSettings
const BLOCK = settings.blockSize

function post(message: FromWorker, transfer?: ArrayBuffer[]): void {
  port!.postMessage(message, transfer)
}

const client = new RegistryClient({
  ...settings.client,
  observer: { onResponse: (info) => post({ t: 'response', info }) },
  onRedirect: (digest, url) => post({ t: 'redirect', digest, url }),
})

/** Open data files by path. A blob's files are forgotten (closed) when the main thread drops the blob. */
class DataFiles {
  private readonly fds = new Map<string, number>()
  private static readonly MAX_OPEN = 64

  fd(path: string): number {
    let fd = this.fds.get(path)
    if (fd !== undefined) {
      // Most recently used last, so the oldest is closed first.
      this.fds.delete(path)
      this.fds.set(path, fd)
      return fd
    }
    fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600)
    this.fds.set(path, fd)
    if (this.fds.size > DataFiles.MAX_OPEN) {
      const [oldPath, oldFd] = this.fds.entries().next().value as [string, number]
      this.fds.delete(oldPath)
      closeSync(oldFd)
    }
    return fd
  }

  forget(path: string): void {
    const fd = this.fds.get(path)
    if (fd === undefined) return
    this.fds.delete(path)
    closeSync(fd)
  }
}

const files = new DataFiles()
const jobs = new Map<number, { controller: AbortController; assembler: BlockAssembler }>()
/** Running sha256 of blobs being verified, by digest: bytes [0, at) of the data file are hashed. */
const prefixes = new Map<string, { hash: Hash; at: number }>()
/** For reading blocks back (checks, running hashes, the rare re-hash of a block that arrived out of order). */
const scratch = Buffer.allocUnsafe(BLOCK)

function blockLength(blobSize: number, n: number): number {
  return Math.max(0, Math.min(BLOCK, blobSize - n * BLOCK))
}

function writeAll(fd: number, data: Buffer, position: number): void {
  let done = 0
  while (done < data.length) done += writeSync(fd, data, done, data.length - done, position + done)
}

/** Reads `length` bytes at `position` into `into`; returns how many it got (fewer only at end of file). */
function readAll(fd: number, into: Buffer, length: number, position: number): number {
  let done = 0
  while (done < length) {
    const n = readSync(fd, into, done, length - done, position + done)
    if (n === 0) break
    done += n
  }
  return done
}

interface BlockInProgress {
  /** Running checksum of bytes [0, hashedTo) of the block; undefined if bytes came out of order (re-read at the end). */
  hash?: BlockChecksum
  hashedTo: number
  got: number
  /** The block's bytes, once the disk refused a write: the block is then landed from memory. */
  memory?: Buffer
  /** Some of its bytes reached neither the disk nor memory: never landed. */
  lost?: boolean
}

/**
 * Turns a response's chunks (blob position, in order per response, each byte once) into blocks written to
 * the data file and landed with their checksums. Positions outside the asked range (a server that sent the whole
 * blob) are stored the same way: every block received is kept.
 */
class BlockAssembler {
  private readonly blocks = new Map<number, BlockInProgress>()
  private diskFailed = false
  /** The asked range is in the data file from its start up to here. */
  private reached: number
  /** Positions the main thread waits for (a reader of bytes before the block is complete), ascending. */
  private watches: number[] = []

  constructor(private readonly id: number, private readonly path: string, private readonly blobSize: number, start: number) {
    this.reached = start
  }

  /** Reports once the range is written up to `position` (at once if it already is). */
  watch(position: number): void {
    if (position <= this.reached) { post({ t: 'reached', id: this.id, at: this.reached }); return }
    this.watches.push(position)
    this.watches.sort((a, b) => a - b)
  }

  add(chunk: Buffer, position: number): void {
    let at = position
    let off = 0
    while (off < chunk.length) {
      const n = Math.floor(at / BLOCK)
      const blockStart = n * BLOCK
      const length = blockLength(this.blobSize, n)
      const take = Math.min(chunk.length - off, blockStart + length - at)
      if (take <= 0) return // past the blob's end: a server bug, nothing to keep
      const part = chunk.subarray(off, off + take)
      this.block(n, part, at - blockStart, length)
      at += take
      off += take
    }
  }

  private block(n: number, part: Buffer, within: number, length: number): void {
    let b = this.blocks.get(n)
    if (!b) {
      b = { hash: within === 0 ? new BlockChecksum(n) : undefined, hashedTo: 0, got: 0 }
      this.blocks.set(n, b)
    }
    if (this.store(b, n, part, within, length) && n * BLOCK + within === this.reached) {
      this.reached += part.length
      if (this.watches.length && this.watches[0]! <= this.reached) {
        this.watches = this.watches.filter((w) => w > this.reached)
        post({ t: 'reached', id: this.id, at: this.reached })
      }
    }
    if (b.hash && within === b.hashedTo) {
      b.hash.update(part)
      b.hashedTo += part.length
    } else {
      b.hash = undefined
    }
    b.got += part.length
    if (b.got >= length) {
      this.blocks.delete(n)
      this.complete(n, b, length)
    }
  }

  /**
   * Writes a part into the data file; once the disk refused a write, blocks collect their bytes in memory
   * instead. A block is landed "on disk" only if every one of its writes succeeded.
   */
  private store(b: BlockInProgress, n: number, part: Buffer, within: number, length: number): boolean {
    if (!b.memory && !b.lost && !this.diskFailed) {
      try {
        writeAll(files.fd(this.path), part, n * BLOCK + within)
        return true
      } catch (err) {
        this.diskFailed = true
        post({ t: 'write-error', path: this.path, error: toWire(err) })
        // Blocks under way keep what they have: it is in the file (page cache) and read back into memory.
        for (const [m, other] of this.blocks) if (other !== b) this.toMemory(other, m, blockLength(this.blobSize, m))
      }
    }
    if (!b.memory && !b.lost) this.toMemory(b, n, length)
    if (b.memory) part.copy(b.memory, within)
    return false
  }

  /**
   * Moves a block to memory: the bytes it already has (written to the file) are read back. Only a block
   * whose bytes came in order knows which bytes those are ([0, got)); any other is given up (never landed).
   */
  private toMemory(b: BlockInProgress, n: number, length: number): void {
    if (b.memory || b.lost) return
    if (!b.hash && b.got > 0) { b.lost = true; return }
    const have = b.got
    b.memory = Buffer.allocUnsafeSlow(length) // never from Buffer's shared pool: it is transferred whole
    if (have === 0) return
    try {
      if (readAll(files.fd(this.path), b.memory, have, n * BLOCK) === have) return
    } catch {
      // fall through
    }
    b.lost = true
    b.memory = undefined
  }

  private complete(n: number, b: BlockInProgress, length: number): void {
    if (b.lost) return
    let checksum: number
    if (b.hash) checksum = b.hash.digest()
    else if (b.memory) checksum = blockChecksum(b.memory.subarray(0, length), n)
    else {
      if (readAll(files.fd(this.path), scratch, length, n * BLOCK) !== length) return
      checksum = blockChecksum(scratch.subarray(0, length), n)
    }
    if (b.memory) {
      const memory = new Uint8Array(b.memory.buffer, b.memory.byteOffset, length)
      post({ t: 'landed', id: this.id, block: n, checksum, memory }, [b.memory.buffer as ArrayBuffer])
    } else {
      post({ t: 'landed', id: this.id, block: n, checksum })
    }
  }
}

async function fetchJob(m: Extract<ToWorker, { t: 'fetch' }>): Promise<void> {
  const controller = new AbortController()
  const assembler = new BlockAssembler(m.id, m.path, m.blobSize, m.offset)
  jobs.set(m.id, { controller, assembler })
  try {
    await client.streamBlobRange(m.reference, m.digest, m.offset, m.length, (chunk, position) => assembler.add(chunk, position), {
      signal: controller.signal,
      keepExtra: true,
      purpose: m.purpose,
      onWholeBlob: () => post({ t: 'whole', id: m.id }),
    })
    post({ t: 'done', id: m.id })
  } catch (err) {
    post({ t: 'failed', id: m.id, error: toWire(err) })
  } finally {
    jobs.delete(m.id)
  }
}

function storeJob(m: Extract<ToWorker, { t: 'store' }>): void {
  try {
    const data = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength)
    new BlockAssembler(m.id, m.path, m.blobSize, m.offset).add(data, m.offset)
    post({ t: 'done', id: m.id })
  } catch (err) {
    post({ t: 'failed', id: m.id, error: toWire(err) })
  }
}

function checkJob(m: Extract<ToWorker, { t: 'check' }>): void {
  const ok = new Uint8Array(m.blocks.length)
  let fd: number | undefined
  try {
    fd = files.fd(m.path)
  } catch {
    // no data file: every block fails its check
  }
  m.blocks.forEach((n, i) => {
    if (fd === undefined) return
    const length = blockLength(m.blobSize, n)
    try {
      if (readAll(fd, scratch, length, n * BLOCK) !== length) return
    } catch {
      return
    }
    ok[i] = blockChecksum(scratch.subarray(0, length), n) === m.checksums[i] ? 1 : 0
  })
  post({ t: 'checked', id: m.id, ok })
}

function prefixJob(m: Extract<ToWorker, { t: 'prefix' }>): void {
  let state = prefixes.get(m.digest)
  if (!state) {
    state = { hash: createHash('sha256'), at: 0 }
    prefixes.set(m.digest, state)
  }
  try {
    const fd = files.fd(m.path)
    while (state.at < m.to) {
      const length = Math.min(BLOCK, m.to - state.at)
      if (readAll(fd, scratch, length, state.at) !== length) break
      state.hash.update(scratch.subarray(0, length))
      state.at += length
    }
  } catch (err) {
    prefixes.delete(m.digest)
    post({ t: 'failed', id: m.id, error: toWire(err) })
    return
  }
  if (state.at >= m.blobSize) {
    prefixes.delete(m.digest)
    post({ t: 'prefixed', id: m.id, at: state.at, digest: `sha256:${state.hash.digest('hex')}` })
  } else {
    post({ t: 'prefixed', id: m.id, at: state.at })
  }
}

port.on('message', (m: ToWorker) => {
  switch (m.t) {
    case 'fetch': void fetchJob(m); break
    case 'store': storeJob(m); break
    case 'check': checkJob(m); break
    case 'prefix': prefixJob(m); break
    case 'abort': jobs.get(m.id)?.controller.abort(); break
    case 'watch': jobs.get(m.id)?.assembler.watch(m.position); break
    case 'forget': files.forget(m.path); prefixes.delete(m.digest); break
    case 'redirect':
      if (m.url) client.rememberRedirect(m.digest, m.url, false)
      else client.forgetRedirect(m.digest, false)
      break
  }
})
