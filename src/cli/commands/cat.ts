import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { openModel } from '../../index/open-model.js'
import { splitPath } from '../../index/tree.js'
import { NotFoundError } from '../../registry/errors.js'
import { DigestMismatchError, UsageError } from '../../util/errors.js'
import type { CommandContext } from '../context.js'

const CHUNK = 8 * 1024 * 1024
/** Tar layers up to this size are read whole so the blob digest can be checked before any byte is written. */
const VERIFY_WHOLE_TAR_BELOW = 16 * 1024 * 1024

async function write(out: NodeJS.WritableStream, data: Buffer): Promise<void> {
  if (!out.write(data)) await once(out, 'drain')
}

/**
 * Streams one file to stdout with ranged GETs. A raw layer is hashed on the way and checked at the end (the
 * exit code says if it was wrong); a small tar layer is fetched whole and checked before anything is written.
 */
export async function catCommand(ctx: CommandContext, path: string): Promise<void> {
  const { tree, manifest } = await openModel(ctx.client, ctx.ref, { store: ctx.store, log: ctx.log })
  const rel = splitPath(path).join('/')
  let node = tree.lookup(rel)
  for (let hops = 0; node?.kind === 'symlink' && hops < 40; hops++) {
    const target = node.target.startsWith('/') ? node.target : [...splitPath(rel).slice(0, -1), node.target].join('/')
    node = tree.lookup(normalise(target))
  }
  if (!node) throw new NotFoundError(`${path}: no such file in the model`)
  if (node.kind !== 'file') throw new UsageError(`${path}: is a ${node.kind}, not a file`)
  const layer = manifest.layers[node.layer]
  const digest = layer.descriptor.digest
  const out = process.stdout
  if (layer.form !== 'raw' && layer.descriptor.size <= VERIFY_WHOLE_TAR_BELOW) {
    const blob = await ctx.client.readBlobRange(ctx.ref, digest, 0, layer.descriptor.size)
    const actual = 'sha256:' + createHash('sha256').update(blob).digest('hex')
    if (actual !== digest) throw new DigestMismatchError(`layer ${layer.index} (${path})`, digest, actual)
    await write(out, blob.subarray(node.offset, node.offset + node.size))
    return
  }
  const hash = layer.form === 'raw' ? createHash('sha256') : undefined
  for (let pos = 0; pos < node.size; pos += CHUNK) {
    const n = Math.min(CHUNK, node.size - pos)
    const data = await ctx.client.readBlobRange(ctx.ref, digest, node.offset + pos, n)
    hash?.update(data)
    await write(out, data)
  }
  if (hash) {
    const actual = 'sha256:' + hash.digest('hex')
    if (actual !== digest) throw new DigestMismatchError(`layer ${layer.index} (${path})`, digest, actual)
  }
}

function normalise(p: string): string {
  const parts: string[] = []
  for (const seg of splitPath(p)) {
    if (seg === '..') parts.pop()
    else parts.push(seg)
  }
  return parts.join('/')
}
