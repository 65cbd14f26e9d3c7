/** `cnaifs status MP` and `cnaifs unmount MP`: a mount's daemon, found from the mount point alone. */
import { execFile } from 'node:child_process'
import { resolve } from 'node:path'
import type { Command } from 'commander'
import { waitForExit } from '../../daemon/runtime-registry.js'
import { CnaifsError, UsageError, errorMessage } from '../../util/errors.js'
import { formatBytes } from '../../util/progress.js'
import { defaultCacheDir } from '../context.js'
import { table } from '../format.js'
import { globals } from '../options.js'
import { daemonProcess, locateDaemon } from './daemon-lookup.js'

/** How long `unmount` waits for the daemon to exit after SIGTERM, by default. */
const UNMOUNT_TIMEOUT_SECONDS = '20'

export function registerDaemonCommands(program: Command): void {
  program.command('unmount')
    .alias('umount')
    .description('unmount a cnaifs mount: stops its daemon and waits for it to exit (clears a stale mount left by a killed daemon)')
    .argument('<mountpoint>', 'the mount point')
    .option('-z, --lazy', 'detach even if files are open (fusermount -uz), then stop the daemon (reads of files still open then fail)')
    .option('--timeout <seconds>', 'how long to wait for the daemon to exit', UNMOUNT_TIMEOUT_SECONDS)
    .action(async (mountpoint: string, opts: { lazy?: boolean; timeout: string }, cmd: Command) => {
      const abs = resolve(mountpoint)
      const timeoutSec = Number(opts.timeout)
      if (!(timeoutSec > 0)) throw new UsageError('--timeout must be a positive number of seconds')
      const { clearStaleMount, isMounted } = await import('../../fuse/mount-table.js')
      const located = await locateDaemon(abs, globals(cmd).cacheDir ?? defaultCacheDir())
      const proc = located ? await daemonProcess(located) : undefined
      await located?.control.close()
      if (proc) {
        if (opts.lazy && (await isMounted(abs))) await fusermount(abs, true)
        try {
          process.kill(proc.pid, 'SIGTERM')
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err
        }
        // Success means the daemon is gone, not only the mount: a daemon left running would hold its cache,
        // its log and its registry entry with no mount to serve.
        if (!(await waitForExit(proc.pid, proc.startTime, timeoutSec * 1000))) {
          const busy = await isMounted(abs)
          throw new CnaifsError('EBUSY', `the daemon of ${abs} (pid ${proc.pid}) is still running ${timeoutSec} s after SIGTERM${busy ? ' and the mount is still there (files open? use --lazy)' : ''}`)
        }
        if (await clearStaleMount(abs)) process.stderr.write(`cleared the stale mount the daemon left at ${abs}\n`)
        if (await isMounted(abs)) throw new CnaifsError('EBUSY', `the daemon of ${abs} exited but ${abs} is still mounted`)
      } else if (await clearStaleMount(abs)) {
        process.stderr.write(`cleared a stale mount at ${abs}\n`)
      } else if (await isMounted(abs)) {
        // Mounted, but no daemon we can find (another user's, or one whose registry entry was deleted): the
        // kernel tells its daemon, which exits once the mount is gone.
        await fusermount(abs, Boolean(opts.lazy))
      } else {
        throw new UsageError(`${abs} is not mounted`)
      }
      process.stdout.write(`unmounted ${abs}\n`)
    })

  program.command('status')
    .description('show a mount\'s files with how much of each is cached, and its daemon\'s counters')
    .argument('<mountpoint>', 'the mount point')
    .option('--json', 'print JSON')
    .action(async (mountpoint: string, opts: { json?: boolean }, cmd: Command) => {
      const abs = resolve(mountpoint)
      const located = await locateDaemon(abs, globals(cmd).cacheDir ?? defaultCacheDir())
      if (!located) throw new UsageError(`${abs}: no cnaifs daemon serves this mount point`)
      const s = await located.control.status().catch((err: unknown) => {
        const who = located.entry ? `its daemon (pid ${located.entry.pid})` : 'its daemon'
        throw new CnaifsError('EDAEMON', `${abs}: ${who} does not answer on ${located.control.socketPath} (${errorMessage(err)})`)
      }).finally(() => located.control.close())
      const status = { ...s, ...(located.entry ? { cacheDir: located.entry.cacheDir, log: located.entry.log, startedAt: located.entry.startedAt } : {}) }
      if (opts.json) { process.stdout.write(JSON.stringify(status, null, 2) + '\n'); return }
      const cachedTotal = s.files.reduce((n, f) => n + f.cached, 0)
      const sizeTotal = s.files.reduce((n, f) => n + f.size, 0)
      const dropped = s.metrics.cnaifs_log_dropped_lines ?? 0
      const out = [
        `Mount:      ${s.mountpoint}`, `Reference:  ${s.reference}`, `Digest:     ${s.digest}`, `Daemon pid: ${s.pid}`,
        ...(located.entry ? [`Cache dir:  ${located.entry.cacheDir}`, `Log:        ${located.entry.log}${dropped ? ` (${dropped} lines could not be written)` : ''}`] : []),
        `Cached:     ${formatBytes(cachedTotal)} of ${formatBytes(sizeTotal)} (${sizeTotal ? ((cachedTotal / sizeTotal) * 100).toFixed(1) : '100.0'}%)`,
        `Binding:    ${s.binding}${s.binding === 'fuse3' ? ' (libfuse 3, 1 MiB requests)' : ' (libfuse 2 through fuse-native, 128 KiB requests)'}`,
        `Disk cache: ${formatBytes(s.cacheDiskBytes)}${s.cacheWritable ? '' : ` — CANNOT WRITE (${s.cacheWriteFailures} failed writes): reads go on from memory and the registry`}`, '',
        table([['FILE', 'SIZE', 'CACHED', '%'], ...s.files.map((f) => [f.path, String(f.size), String(f.cached), f.size ? ((f.cached / f.size) * 100).toFixed(1) : '100.0'])]),
        '', 'Counters:', ...Object.entries(s.metrics).map(([k, v]) => `  ${k} ${v}`),
      ]
      process.stdout.write(out.join('\n') + '\n')
    })
}

function fusermount(mountpoint: string, lazy: boolean): Promise<void> {
  return new Promise((ok, fail) => {
    execFile('fusermount', [lazy ? '-uz' : '-u', mountpoint], (err, _out, stderr) => {
      if (err) fail(new CnaifsError('EBUSY', `fusermount -u ${mountpoint}: ${stderr.trim() || err.message}`))
      else ok()
    })
  })
}
