import { formatReference } from '../../registry/reference.js'
import { PACK_FORMATS, pushDirectory, type PackFormat } from '../../pack/push.js'
import { UsageError } from '../../util/errors.js'
import { ProgressBar, formatBytes } from '../../util/progress.js'
import type { CommandContext } from '../context.js'

export async function pushCommand(ctx: CommandContext, dir: string, options: { format?: string; legacy?: boolean; name?: string; progress?: boolean }): Promise<void> {
  const format = (options.format ?? 'raw') as PackFormat
  if (!PACK_FORMATS.includes(format)) throw new UsageError(`--format must be one of ${PACK_FORMATS.join(', ')}, got ${JSON.stringify(options.format)}`)
  const bar = new ProgressBar(`pushing ${formatReference(ctx.ref)}`, process.stderr, options.progress !== false)
  const result = await pushDirectory(ctx.client, ctx.ref, dir, { format, legacy: options.legacy, name: options.name, onProgress: (d, t) => bar.update(d, t) })
  process.stdout.write(`pushed ${result.files} files (${formatBytes(result.bytes)}) as ${formatReference({ ...ctx.ref, digest: result.digest })}\n`)
}
