import { Command, Option } from 'commander'
import { readFileSync } from 'node:fs'
import { errorMessage } from '../util/errors.js'
import { createContext, defaultCacheDir, type RegistryCliOptions } from './context.js'
import { addRegistryOptions, globals } from './options.js'
import { exitCodeFor, EXIT } from './exit-codes.js'
import { catCommand } from './commands/cat.js'
import { inspectCommand } from './commands/inspect.js'
import { lsCommand } from './commands/ls.js'
import { pushCommand } from './commands/push.js'
import { PACK_FORMATS } from '../pack/push.js'
import { registerMountCommands } from './commands/mount.js'
import { registerDaemonCommands } from './commands/daemon-commands.js'
import { registerCacheCommands } from './commands/cache.js'

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }

export function buildProgram(): Command {
  const program = new Command()
  program
    .name('cnaifs')
    .description('Mount AI models packaged as OCI artifacts (CNCF ModelPack / CNAI) lazily from a registry.')
    .version(pkg.version)
    .option('--cache-dir <dir>', `cache directory for indexes and blocks (default: ${defaultCacheDir()})`)
    .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('warn'))
    .option('-d, --debug', 'the same as --log-level debug')
    .showHelpAfterError()
    .hook('preAction', (top) => {
      if (top.getOptionValue('debug')) top.setOptionValueWithSource('logLevel', 'debug', 'cli')
    })

  addRegistryOptions(program.command('inspect')
    .description('show the model: name, family, format, parameters, layers, file count and size')
    .argument('<ref>', 'image reference: host[:port]/repo[:tag][@sha256:…]')
    .option('--json', 'print JSON'))
    .action(async (ref: string, opts: RegistryCliOptions & { json?: boolean }, cmd: Command) => {
      await inspectCommand(await createContext(ref, globals(cmd), opts), opts)
    })

  addRegistryOptions(program.command('ls')
    .description('list the model\'s files as a mount would show them (reads tar headers only, no file bodies)')
    .argument('<ref>', 'image reference')
    .argument('[path]', 'directory or file inside the model', '')
    .option('-l, --long', 'show mode, links, owner, size and mtime')
    .option('-R, --recursive', 'list every path below'))
    .action(async (ref: string, path: string, opts: RegistryCliOptions & { long?: boolean; recursive?: boolean }, cmd: Command) => {
      await lsCommand(await createContext(ref, globals(cmd), opts), path, opts)
    })

  addRegistryOptions(program.command('cat')
    .description('write one file of the model to stdout, fetched with ranged reads')
    .argument('<ref>', 'image reference')
    .argument('<path>', 'file inside the model'))
    .action(async (ref: string, path: string, opts: RegistryCliOptions, cmd: Command) => {
      await catCommand(await createContext(ref, globals(cmd), opts), path)
    })

  addRegistryOptions(program.command('push')
    .description('pack a directory as a ModelPack artifact (one file per layer, as modctl does) and push it')
    .argument('<dir>', 'directory holding the model files')
    .argument('<ref>', 'image reference to push to')
    .addOption(new Option('--format <format>', 'layer format (tar+gzip: gzip -6; tar+zstd: zstd frames of 2 MiB with a seek table, needs the zstd command)').choices(PACK_FORMATS).default('raw'))
    .option('--legacy', 'write the legacy vnd.cnai media types and annotations')
    .option('--name <name>', 'model name for the config (default: last part of the repository)')
    .option('--no-progress', 'no progress bar'))
    .action(async (dir: string, ref: string, opts: RegistryCliOptions & { format?: string; legacy?: boolean; name?: string; progress?: boolean }, cmd: Command) => {
      await pushCommand(await createContext(ref, globals(cmd), opts), dir, opts)
    })

  registerMountCommands(program)
  registerDaemonCommands(program)
  registerCacheCommands(program)
  return program
}

export async function main(argv: string[]): Promise<void> {
  // `cnaifs cat … | head` closes our stdout early: stop quietly, as GNU tools do.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(EXIT.ok)
    throw err
  })
  const program = buildProgram()
  program.exitOverride()
  try {
    await program.parseAsync(argv)
  } catch (err) {
    const code = (err as { code?: string }).code
    if (code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help') process.exit(EXIT.ok)
    if (typeof code === 'string' && code.startsWith('commander.')) process.exit(EXIT.usage) // commander printed it
    process.stderr.write(`cnaifs: ${errorMessage(err)}\n`)
    process.exit(exitCodeFor(err))
  }
}
