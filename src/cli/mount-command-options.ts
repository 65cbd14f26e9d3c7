/** The glue between `cnaifs mount`'s flags, its `-o` list and the runtime registry. */
import type { Command } from 'commander'
import { findDaemon } from '../daemon/runtime-registry.js'
import { CnaifsError, UsageError } from '../util/errors.js'
import type { GlobalCliOptions } from './context.js'
import { mergeMountOptions, parseMountOptions } from './mount-options.js'
import { globals } from './options.js'

const PREFETCH_MODES = ['none', 'meta', 'all']
const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']

/**
 * The mount command's options with its `-o` lists applied: `-o cache_max_size=50G` is `--cache-max-size 50G`,
 * `-o cache_dir=…` is the global `--cache-dir`. Values -o sets skip commander's own checks, so the options
 * with fixed choices are checked here.
 */
export function applyMountOptions<T extends { options?: string[]; prefetch: string }>(flags: T, cmd: Command): { opts: T; g: GlobalCliOptions } {
  const parsed = parseMountOptions(flags.options ?? [])
  const top = cmd.parent ?? cmd
  const opts = mergeMountOptions(flags, parsed.command, (attr) => cmd.getOptionValueSource(attr) === 'cli')
  const g = mergeMountOptions(globals(cmd), parsed.global, (attr) => top.getOptionValueSource(attr) === 'cli' && !(attr === 'logLevel' && top.getOptionValue('debug')))
  if (!PREFETCH_MODES.includes(opts.prefetch)) throw new UsageError(`prefetch must be one of ${PREFETCH_MODES.join(', ')}, got ${JSON.stringify(opts.prefetch)}`)
  if (g.logLevel !== undefined && !LOG_LEVELS.includes(g.logLevel)) throw new UsageError(`log level must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(g.logLevel)}`)
  return { opts, g }
}

/** A mount point a live cnaifs daemon serves is refused before anything is fetched or started. */
export async function refuseIfServed(mountpoint: string): Promise<void> {
  const d = await findDaemon(mountpoint)
  if (d) throw new CnaifsError('EBUSY', `${mountpoint} is in use: cnaifs daemon ${d.pid} serves ${d.reference} there (cnaifs unmount ${mountpoint} first)`)
}
