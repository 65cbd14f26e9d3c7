import { openModel } from '../../index/open-model.js'
import type { DirectoryNode, TreeNode } from '../../index/tree.js'
import { splitPath } from '../../index/tree.js'
import { NotFoundError } from '../../registry/errors.js'
import type { CommandContext } from '../context.js'
import { longLine } from '../format.js'

export async function lsCommand(ctx: CommandContext, path: string | undefined, options: { long?: boolean; recursive?: boolean }): Promise<void> {
  const { tree } = await openModel(ctx.client, ctx.ref, { store: ctx.store, log: ctx.log, compressed: ctx.compressed.indexLayer })
  const rel = splitPath(path ?? '').join('/')
  const node = tree.lookup(rel)
  if (!node) throw new NotFoundError(`${path}: no such file or directory in the model`)
  const out: string[] = []
  const show = (n: TreeNode, name: string) => out.push(options.long ? longLine(n, name) : name)
  if (node.kind !== 'directory') {
    show(node, rel)
  } else if (options.recursive) {
    for (const { path: p, node: n } of tree.walk(node as DirectoryNode)) {
      if (p === '') continue
      show(n, p)
    }
  } else {
    for (const name of [...node.children.keys()].sort()) show(node.children.get(name) as TreeNode, name)
  }
  if (out.length) process.stdout.write(out.join('\n') + '\n')
}
