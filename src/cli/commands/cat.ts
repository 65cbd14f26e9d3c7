import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { openModel } from '../../index/open-model.js'
import { splitPath, type FileTree, type TreeNode } from '../../index/tree.js'
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
  const { tree, manifest, layerViews } = await openModel(ctx.client, ctx.ref, { store: ctx.store, log: ctx.log, compressed: ctx.compressed.indexLayer })
  const node = resolve(tree, path)
  if (!node) throw new NotFoundError(`${path}: no such file in the model`)
  if (node.kind !== 'file') throw new UsageError(`${path}: is a ${node.kind}, not a file`)
  const layer = manifest.layers[node.layer]
  const digest = layer.descriptor.digest
  const out = process.stdout
  if (layerViews?.[node.layer]) {
    // A compressed layer, read through its checkpoint index: every compressed byte used is checked against the
    // hashes of the indexing pass (which checked the whole blob against its digest); bad data exits non-zero.
    const view = await ctx.compressed.view(layer)
    for (let pos = 0; pos < node.size; pos += CHUNK) await write(out, await view.read(node.offset + pos, Math.min(CHUNK, node.size - pos)))
    return
  }
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

/**
 * Looks a path up following symlinks in every component, each relative to the directory holding it (absolute
 * targets are taken from the model root), as reading through a mount would. Undefined if missing or looping.
 */
function resolve(tree: FileTree, path: string): TreeNode | undefined {
  let pending = splitPath(path)
  const done: string[] = []
  let hops = 0
  while (pending.length > 0) {
    const part = pending.shift() as string
    if (part === '..') { done.pop(); continue }
    const node = tree.lookup([...done, part].join('/'))
    if (!node) return undefined
    if (node.kind === 'symlink') {
      if (++hops > 40) return undefined
      if (node.target.startsWith('/')) done.length = 0
      pending = [...splitPath(node.target), ...pending]
      continue
    }
    if (pending.length > 0 && node.kind !== 'directory') return undefined
    done.push(part)
  }
  return tree.lookup(done.join('/'))
}
