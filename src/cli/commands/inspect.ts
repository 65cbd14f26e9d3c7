import { parseModelConfig } from '../../modelpack/config.js'
import { resolveModel } from '../../modelpack/resolve.js'
import { openModel } from '../../index/open-model.js'
import { UnsupportedLayerError } from '../../index/build.js'
import { DecompressionError } from '../../compressed/errors.js'
import { formatReference } from '../../registry/reference.js'
import { formatBytes } from '../../util/progress.js'
import type { CommandContext } from '../context.js'
import { table } from '../format.js'

export async function inspectCommand(ctx: CommandContext, options: { json?: boolean }): Promise<void> {
  const resolved = await resolveModel(ctx.client, ctx.ref)
  const { manifest } = resolved
  const configBytes = await ctx.client.getBlob(ctx.ref, manifest.config.digest)
  const config = parseModelConfig(configBytes)
  let files: { count: number; bytes: number } | { unavailable: string }
  try {
    const opened = await openModel(ctx.client, ctx.ref, { resolved, store: ctx.store, log: ctx.log, compressed: ctx.compressed.indexLayer })
    const s = opened.tree.stats()
    files = { count: s.files, bytes: s.bytes }
  } catch (err) {
    if (!(err instanceof UnsupportedLayerError || err instanceof DecompressionError)) throw err
    files = { unavailable: err.message }
  }
  const layers = manifest.layers.map((l) => ({
    index: l.index, mediaType: l.descriptor.mediaType, kind: l.kind, form: l.form, size: l.descriptor.size, digest: l.descriptor.digest, path: l.path ?? null,
  }))
  if (options.json) {
    process.stdout.write(JSON.stringify({
      reference: formatReference(ctx.ref), digest: manifest.digest, family: manifest.family, artifactType: manifest.artifactType ?? null,
      configMediaType: manifest.config.mediaType, config, layers, files,
    }, null, 2) + '\n')
    return
  }
  const lines = [
    `Reference:     ${formatReference(ctx.ref)}`,
    `Digest:        ${manifest.digest}`,
    `Family:        ${manifest.family} (${manifest.artifactType ?? manifest.config.mediaType})`,
    `Name:          ${config.name ?? '-'}`,
    `Model family:  ${config.family ?? '-'}`,
    `Version:       ${config.version ?? '-'}`,
    `Created:       ${config.createdAt ?? '-'}`,
    `Architecture:  ${config.architecture ?? '-'}`,
    `Format:        ${config.format ?? '-'}`,
    `Parameters:    ${config.paramSize ?? '-'}`,
    `Precision:     ${config.precision ?? '-'}`,
    `Quantization:  ${config.quantization ?? '-'}`,
    `Licenses:      ${config.licenses?.join(', ') || '-'}`,
    'files' in files ? '' : '',
  ].filter((l) => l !== '')
  lines.push('count' in files ? `Files:         ${files.count} (${formatBytes(files.bytes)}, ${files.bytes} bytes)` : `Files:         unavailable: ${files.unavailable}`)
  lines.push('', `Layers (${layers.length}):`)
  lines.push(table([
    ['#', 'MEDIA TYPE', 'SIZE', 'DIGEST', 'PATH'],
    ...layers.map((l) => [String(l.index), l.mediaType, formatBytes(l.size), l.digest.slice(0, 19), l.path ?? '-']),
  ]))
  process.stdout.write(lines.join('\n') + '\n')
}
