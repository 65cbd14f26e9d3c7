import { spawn } from 'node:child_process'
import { accessSync, constants, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Command, Option } from 'commander'
// The daemon, FUSE addon, cache and metrics are loaded by the commands that use them (dynamic imports
// below), so `cnaifs ls`, `cat` and `--help` start without them.
import { formatReference, parseReference } from '../../registry/reference.js'
import { CnaifsError, UsageError, isErrorCode } from '../../util/errors.js'
import { DEFAULTS } from '../../util/defaults.js'
import { createLogger } from '../../util/log.js'
import { ProgressBar, formatSizeArg, parseSize } from '../../util/progress.js'
import { createContext, defaultCacheDir, type RegistryCliOptions } from '../context.js'
import { addRegistryOptions, globals } from '../options.js'
import { daemonLogTarget, describeLogTarget, openDaemonLog, stderrIsJournal, type LogTarget } from '../log-location.js'
import { applyMountOptions, refuseIfServed } from '../mount-command-options.js'
import { locateDaemon } from './daemon-lookup.js'

interface MountCliOptions extends RegistryCliOptions {
  foreground?: boolean
  allowOther?: boolean
  uid?: string
  gid?: string
  cacheMaxSize?: string
  readTimeout: string
  memoryBudget: string
  kernelReadahead: string
  metricsAddr?: string
  prefetch: 'none' | 'meta' | 'all'
  prefetchBandwidth?: string
  logFile?: string
  readyTimeout: string
}

function int(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined
  if (!/^\d+$/.test(value)) throw new UsageError(`${name} must be a non-negative integer, got ${JSON.stringify(value)}`)
  return Number(value)
}

function size(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined
  try {
    return parseSize(value)
  } catch (err) {
    throw new UsageError(`${name}: ${(err as Error).message}`)
  }
}

/** Explains what is missing when FUSE cannot work here, before we try and fail obscurely. */
export function checkFuseAvailable(): void {
  if (!existsSync('/dev/fuse')) throw new CnaifsError('ENOFUSE', 'FUSE is not available: /dev/fuse does not exist (load the fuse module, or run the container with --device /dev/fuse)')
  try {
    accessSync('/dev/fuse', constants.R_OK | constants.W_OK)
  } catch {
    throw new CnaifsError('ENOFUSE', 'FUSE is not available to this user: /dev/fuse is not readable and writable (add the user to the fuse group, or run as root)')
  }
  if (process.getuid?.() !== 0 && !['/usr/bin/fusermount3', '/bin/fusermount3', '/usr/bin/fusermount', '/bin/fusermount'].some((p) => existsSync(p))) {
    throw new CnaifsError('ENOFUSE', 'fusermount is missing: install the fuse3 package (apt-get install fuse3)')
  }
}

function prepareMountpoint(mountpoint: string): string {
  const abs = resolve(mountpoint)
  try {
    const st = statSync(abs)
    if (!st.isDirectory()) throw new UsageError(`mount point ${abs} is not a directory`)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') mkdirSync(abs, { recursive: true })
    else if (code !== 'ENOTCONN') throw err instanceof CnaifsError ? err : new UsageError(`mount point ${abs}: ${code}`)
  }
  return abs
}

const CLI_ENTRY = fileURLToPath(new URL('../../../bin/cnaifs', import.meta.url))

/** Starts the daemon in the background and waits for its ready line on fd 3. */
async function mountInBackground(args: string[], logTarget: LogTarget, password: string | undefined, readyTimeoutMs: number): Promise<{ ready: true; digest: string; index: string }> {
  const logFile = describeLogTarget(logTarget)
  const logFd = logTarget.kind === 'file' ? openDaemonLog(logTarget.path) : 'inherit'
  const child = spawn(process.execPath, [CLI_ENTRY, ...args, '--foreground'], {
    detached: true,
    stdio: [password !== undefined ? 'pipe' : 'ignore', logFd, logFd, 'pipe'],
    // MALLOC_ARENA_MAX: glibc gives every thread (fetch workers, libfuse threads) its own malloc arena, which
    // keeps freed response buffers as resident memory; two arenas hold the daemon's RSS to its budget.
    env: { MALLOC_ARENA_MAX: '2', ...process.env, CNAIFS_READY_FD: '3', CNAIFS_LOG_TARGET: logFile },
  })
  if (password !== undefined) child.stdin?.end(password + '\n')
  const pipe = child.stdio[3] as NodeJS.ReadableStream
  const exited = new Promise<number>((ok) => child.once('exit', (code) => ok(code ?? 1)))
  const line = await Promise.race([
    new Promise<string | undefined>((ok) => {
      let buffered = ''
      pipe.on('data', (chunk: Buffer) => {
        buffered += chunk.toString()
        const nl = buffered.indexOf('\n')
        if (nl >= 0) ok(buffered.slice(0, nl))
      })
      pipe.once('close', () => ok(undefined))
    }),
    new Promise<undefined>((ok) => setTimeout(() => ok(undefined), readyTimeoutMs).unref()),
  ])
  const message = line ? (JSON.parse(line) as { ready?: boolean; error?: string; code?: string; digest?: string; index?: string }) : undefined
  if (message?.ready) {
    child.unref()
    ;(pipe as unknown as { destroy(): void }).destroy()
    return { ready: true, digest: message.digest ?? '', index: message.index ?? '' }
  }
  if (!message) child.kill('SIGTERM')
  const code = await Promise.race([exited, new Promise<number>((ok) => setTimeout(() => ok(1), 3000).unref())])
  const detail = message?.error ?? lastLogError(logFile) ?? `the daemon exited with code ${code} before the mount was ready (log: ${logFile})`
  // The daemon's error code, so `cnaifs mount` exits as documented (4 not found, 5 unreachable, …).
  throw new CnaifsError(isErrorCode(message?.code) ? message.code : 'EMOUNT', detail)
}

function lastLogError(logFile: string): string | undefined {
  try {
    const lines = readFileSync(logFile, 'utf8').trim().split('\n').slice(-20).reverse()
    for (const l of lines) {
      try {
        const rec = JSON.parse(l) as { level?: number; msg?: string; error?: string }
        if ((rec.level ?? 0) >= 50) return rec.error ?? rec.msg
      } catch {
        if (l.startsWith('cnaifs: ')) return l.slice('cnaifs: '.length)
      }
    }
  } catch {
    // no log: the caller has a generic message
  }
  return undefined
}

function readPasswordStdin(): Promise<string> {
  return new Promise((ok) => {
    const chunks: Buffer[] = []
    process.stdin.on('data', (c: Buffer) => chunks.push(c)).on('end', () => ok(Buffer.concat(chunks).toString().replace(/\r?\n$/, '')))
  })
}

export function registerMountCommands(program: Command): void {
  addRegistryOptions(program.command('mount')
    .description('mount a model read-only; returns once its files are visible (the daemon keeps running in the background)')
    .argument('<ref>', 'image reference: host[:port]/repo[:tag][@sha256:…]')
    .argument('<mountpoint>', 'directory to mount on (created if missing)')
    .option('-f, --foreground', 'stay attached; logs go to stderr (systemd uses this)')
    .option('--allow-other', 'let other users (pods reading through hostPath) see the mount; needs user_allow_other in /etc/fuse.conf unless root')
    .option('--uid <uid>', 'show every file as owned by this uid')
    .option('--gid <gid>', 'show every file as owned by this gid')
    .option('--cache-max-size <size>', 'bound the disk block cache, e.g. 50G (least recently used blobs are evicted)')
    .option('--read-timeout <seconds>', 'a read the registry cannot serve fails with EIO after this long', '30')
    .option('--memory-budget <size>', 'memory for read-ahead in flight and for blocks the disk cannot take, shared by all open files', formatSizeArg(DEFAULTS.read.memoryBudgetBytes))
    .option('--kernel-readahead <size>', 'the kernel\'s readahead for the mount: an mmap page fault reads this much around the page (small for loaders that mmap scattered tensors); it also caps the size of read requests', formatSizeArg(DEFAULTS.fuse.readaheadBytes))
    .option('--metrics-addr <[host:]port>', 'serve Prometheus metrics on this address (/metrics)')
    .addOption(new Option('--prefetch <mode>', 'prefetch after mounting: none, meta (configs and docs), all (then every weight file)').choices(['none', 'meta', 'all']).default('none'))
    .option('--prefetch-bandwidth <size>', 'cap prefetch at this many bytes per second, e.g. 200M')
    .option('--log-file <path>', 'log file of the background daemon (default: the journal when stderr is the journal, else /var/log/cnaifs/mount-<mount point>.log as root, $XDG_STATE_HOME/cnaifs/logs/… otherwise; $CNAIFS_LOG_DIR overrides the directory)')
    .option('--ready-timeout <seconds>', 'how long to wait for the daemon to be ready', '300')
    .option('-o, --options <list>', 'mount options as mount(8) writes them: key=value,… for any option above (allow_other,cache_max_size=50G,…); repeatable', (v: string, prev: string[] = []) => [...prev, v]))
    .action(async (reference: string, mountpoint: string, flagOpts: MountCliOptions, cmd: Command) => {
      // -o gives the same option values the flags give (src/cli/mount-options.ts).
      const { opts, g } = applyMountOptions(flagOpts, cmd)
      // A bad reference is a usage error (exit 2) here and now, not a daemon that fails to start.
      parseReference(reference)
      checkFuseAvailable()
      const abs = prepareMountpoint(mountpoint)
      await refuseIfServed(abs)
      const readTimeoutSec = Number(opts.readTimeout)
      if (!(readTimeoutSec > 0)) throw new UsageError('--read-timeout must be a positive number of seconds')
      const daemonOptions = {
        mountpoint: abs,
        cacheMaxBytes: size(opts.cacheMaxSize, '--cache-max-size'),
        memoryBudgetBytes: size(opts.memoryBudget, '--memory-budget') ?? DEFAULTS.read.memoryBudgetBytes,
        readaheadBytes: size(opts.kernelReadahead, '--kernel-readahead') ?? DEFAULTS.fuse.readaheadBytes,
        readTimeoutMs: readTimeoutSec * 1000,
        allowOther: Boolean(opts.allowOther),
        uid: int(opts.uid, '--uid'),
        gid: int(opts.gid, '--gid'),
        metricsAddr: opts.metricsAddr,
        prefetch: opts.prefetch,
        prefetchBandwidth: size(opts.prefetchBandwidth, '--prefetch-bandwidth'),
        logTarget: process.env.CNAIFS_LOG_TARGET ?? (stderrIsJournal() ? 'journal' : 'stderr'),
      }
      if (!opts.foreground) {
        const cacheDir = g.cacheDir ?? defaultCacheDir()
        const logTarget = daemonLogTarget({ mountpoint: abs, cacheDir, logFile: opts.logFile })
        const password = opts.passwordStdin ? await readPasswordStdin() : undefined
        const args = process.argv.slice(2).filter((a) => a !== '--foreground' && a !== '-f')
        const started = Date.now()
        const result = await mountInBackground(args, logTarget, password, Number(opts.readyTimeout) * 1000)
        process.stdout.write(`mounted ${reference} (${result.digest}) at ${abs} in ${((Date.now() - started) / 1000).toFixed(2)}s; log: ${describeLogTarget(logTarget)}\n`)
        return
      }
      const log = createLogger(g.logLevel === 'warn' ? 'info' : g.logLevel)
      const ctx = await createContext(reference, g, opts, undefined, log)
      const { runMountDaemon } = await import('../../daemon/mount-daemon.js')
      await runMountDaemon({ ref: ctx.ref, cacheDir: ctx.cacheDir, ...daemonOptions }, { client: ctx.client, store: ctx.store, compressed: ctx.compressed, log })
      // Nothing may keep a daemon whose mount is gone alive (a FUSE library thread, a stray timer).
      process.exit(0)
    })

  addRegistryOptions(program.command('prefetch')
    .description('fill the cache with a model\'s files (all, or the paths given), verifying each finished blob')
    .argument('<ref-or-mountpoint>', 'image reference, or the mount point of a running mount')
    .argument('[paths...]', 'files or directories inside the model (default: everything)')
    .option('--no-progress', 'no progress bar'))
    .action(async (target: string, paths: string[], opts: RegistryCliOptions & { progress?: boolean }, cmd: Command) => {
      const g = globals(cmd)
      const cacheDir = g.cacheDir ?? defaultCacheDir()
      const bar = new ProgressBar(`prefetching ${target}`, process.stderr, opts.progress !== false)
      const located = existsSync(target) && statSync(target).isDirectory() ? await locateDaemon(target, cacheDir) : undefined
      const control = located?.control
      if (control) {
        await control.prefetch(paths, (d, t) => bar.update(d, t)).finally(() => control.close())
        process.stdout.write(`prefetched ${paths.length ? paths.join(' ') : 'every file'} into the cache of ${resolve(target)}\n`)
        return
      }
      const ctx = await createContext(target, g, opts)
      const [{ openModel }, { openDataPath }] = await Promise.all([import('../../index/open-model.js'), import('../../daemon/data-path.js')])
      const model = await openModel(ctx.client, ctx.ref, { store: ctx.store, log: ctx.log, compressed: ctx.compressed.indexLayer })
      const data = await openDataPath({ cacheDir: ctx.cacheDir, client: ctx.client, compressed: ctx.compressed, model, log: ctx.log })
      try {
        const p = data.prefetcher
        await p.fill(paths.length ? p.rangesForPaths(paths) : p.rangesFor('all'), (d, t) => bar.update(d, t))
      } finally {
        await data.close()
        await ctx.client.close()
      }
      process.stdout.write(`prefetched ${formatReference(ctx.ref)} into ${ctx.cacheDir}\n`)
    })
}
