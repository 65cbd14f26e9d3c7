/**
 * The mount(8) helper: `mount -t fuse.cnaifs REF MP -o …` and fstab lines of type `fuse.cnaifs` run
 *
 *   /sbin/mount.fuse.cnaifs SOURCE MOUNTPOINT [-sfnv] [-N NAMESPACE] [-o OPTIONS] [-t TYPE]
 *
 * which becomes `cnaifs mount SOURCE MOUNTPOINT -o OPTIONS`: the daemon goes to the background and the
 * helper exits once the tree is visible, as mount(8) expects of a helper. scripts/install-mount-helper puts
 * it where mount(8) looks.
 */
import { fileURLToPath } from 'node:url'
import { UsageError } from '../util/errors.js'
import { isUnknownMountOption, splitOptions } from './mount-options.js'

export interface HelperInvocation {
  /** Arguments for the cnaifs CLI. */
  argv: string[]
  /** mount -f: do everything but mount. */
  fake: boolean
}

const USAGE = 'usage: mount.fuse.cnaifs REFERENCE MOUNTPOINT [-sfnv] [-o OPTIONS]'

/** Translates the helper's arguments into a `cnaifs mount` command line. */
export function translateHelperArgs(args: string[]): HelperInvocation {
  const positional: string[] = []
  const lists: string[] = []
  let sloppy = false
  let fake = false
  let verbose = false
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!
    if (a === '-o' || a === '-t' || a === '-N') {
      const v = args[++i]
      if (v === undefined) throw new UsageError(`${a} needs a value (${USAGE})`)
      if (a === '-o') lists.push(v)
      else if (a === '-N') throw new UsageError('mount -N (another mount namespace) is not supported by cnaifs')
      continue
    }
    if (a.startsWith('-o') && a.length > 2) { lists.push(a.slice(2)); continue }
    if (/^-[sfnvwr]+$/.test(a)) {
      if (a.includes('s')) sloppy = true
      if (a.includes('f')) fake = true
      if (a.includes('v')) verbose = true
      if (a.includes('w')) throw new UsageError('cnaifs mounts are read-only: mount -w is not possible')
      continue
    }
    if (a.startsWith('-')) throw new UsageError(`unknown option ${a} (${USAGE})`)
    positional.push(a)
  }
  if (positional.length !== 2) throw new UsageError(USAGE)
  // mount -s (sloppy): options cnaifs does not know are dropped here, instead of failing in `cnaifs mount`.
  const items = lists.flatMap(splitOptions).filter((o) => !sloppy || !isUnknownMountOption(o))
  const argv = ['mount', positional[0]!, positional[1]!]
  if (items.length) argv.push('-o', items.join(','))
  if (verbose && !items.some((o) => o.startsWith('log_level') || o.startsWith('log-level') || o === 'debug')) argv.push('--log-level', 'info')
  return { argv, fake }
}

const CLI_ENTRY = fileURLToPath(new URL('../../bin/cnaifs', import.meta.url))

export async function helperMain(args: string[]): Promise<void> {
  let inv: HelperInvocation
  try {
    inv = translateHelperArgs(args)
  } catch (err) {
    process.stderr.write(`mount.fuse.cnaifs: ${(err as Error).message}\n`)
    process.exit(2)
  }
  if (inv.fake) process.exit(0)
  // `cnaifs mount` starts the daemon as `node bin/cnaifs <its own arguments> --foreground`: make them ours.
  process.argv = [process.execPath, CLI_ENTRY, ...inv.argv]
  const { main } = await import('./main.js')
  await main(process.argv)
}
