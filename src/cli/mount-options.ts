/**
 * `-o key=value,…` for `cnaifs mount`, `mount -t fuse.cnaifs` and fstab lines: every option of `cnaifs mount`
 * written the way mount(8) writes options. Each key stands for exactly one command-line flag and gives the same
 * option value the flag gives (a string, or true for a switch), so the two spellings cannot drift apart.
 * Keys may use `_` or `-` (`cache_max_size` = `cache-max-size`). The options mount(8) and fstab use for
 * themselves (defaults, noauto, nofail, _netdev, x-systemd.*, …) are accepted and ignored.
 */
import { UsageError } from '../util/errors.js'

export interface MountOptionSpec {
  /** The commander attribute the flag sets (e.g. cacheMaxSize for --cache-max-size). */
  attr: string
  /** The flag, for messages. */
  flag: string
  /** Whether the option takes a value (`key=value`) or is a switch (`key`). */
  value: boolean
  /** Global options (before the command): --cache-dir, --log-level. */
  global?: boolean
  /** A fixed value the key stands for (`debug` = `--log-level debug`). */
  implies?: string
  /** May be given several times; the values add up (-o header=A:1,header=B:2 is -H A:1 -H B:2). */
  repeatable?: boolean
}

const spec = (flag: string, value: boolean, extra: Partial<MountOptionSpec> = {}): MountOptionSpec => ({
  attr: flag.replace(/^--/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase()), flag, value, ...extra,
})

/** By key, with `_` between words. */
export const MOUNT_OPTIONS: Record<string, MountOptionSpec> = {
  allow_other: spec('--allow-other', false),
  uid: spec('--uid', true),
  gid: spec('--gid', true),
  cache_max_size: spec('--cache-max-size', true),
  read_timeout: spec('--read-timeout', true),
  memory_budget: spec('--memory-budget', true),
  kernel_readahead: spec('--kernel-readahead', true),
  metrics_addr: spec('--metrics-addr', true),
  prefetch: spec('--prefetch', true),
  prefetch_bandwidth: spec('--prefetch-bandwidth', true),
  log_file: spec('--log-file', true),
  ready_timeout: spec('--ready-timeout', true),
  plain_http: spec('--plain-http', false),
  insecure: spec('--insecure', false),
  ca_file: spec('--ca-file', true),
  request_timeout: spec('--request-timeout', true),
  authfile: spec('--authfile', true),
  header: spec('--header', true, { repeatable: true }),
  registry_config: spec('--registry-config', true),
  hosts_dir: spec('--hosts-dir', true),
  containerd_config: spec('--containerd-config', true),
  registries_conf: spec('--registries-conf', true),
  dragonfly_prefetch_priority: spec('--dragonfly-prefetch-priority', true),
  cache_dir: spec('--cache-dir', true, { global: true }),
  log_level: spec('--log-level', true, { global: true }),
  debug: { attr: 'logLevel', flag: '--debug', value: false, global: true, implies: 'debug' },
}

/**
 * Options of mount(8), fstab and libfuse that say nothing to cnaifs: accepted, never passed on. cnaifs
 * mounts are always read-only, nosuid and nodev, so `rw`, `suid` and `dev` change nothing either.
 */
const IGNORED = new Set([
  'defaults', 'auto', 'noauto', 'user', 'nouser', 'users', 'owner', 'group', 'nofail', '_netdev', 'rw', 'ro',
  'suid', 'nosuid', 'dev', 'nodev', 'exec', 'noexec', 'async', 'sync', 'atime', 'noatime', 'relatime',
  'norelatime', 'strictatime', 'lazytime', 'nolazytime', 'diratime', 'nodiratime', 'silent', 'loud', 'mand', 'nomand',
  'default_permissions',
])
const IGNORED_PREFIXES = ['x-', 'comment=', 'fsname=', 'subtype=', 'context=', 'fscontext=', 'defcontext=', 'rootcontext=']

export interface ParsedMountOptions {
  /** Values for the mount command's options, by commander attribute (a list for repeatable ones). */
  command: Record<string, string | true | string[]>
  /** Values for the global options (cacheDir, logLevel). */
  global: Record<string, string>
  /** Options accepted and ignored (mount(8)'s own; unknown ones when sloppy). */
  ignored: string[]
}

/** Splits at commas outside double quotes; quotes around a value are removed (`ca_file="/a,b.pem"`). */
export function splitOptions(list: string): string[] {
  const out: string[] = []
  let cur = ''
  let quoted = false
  for (const ch of list) {
    if (ch === '"') quoted = !quoted
    else if (ch === ',' && !quoted) { out.push(cur); cur = '' }
    else cur += ch
  }
  if (quoted) throw new UsageError(`-o ${list}: unbalanced double quote`)
  out.push(cur)
  return out.filter((o) => o !== '')
}

/** Whether an option is neither one of cnaifs' nor one of mount(8)'s own (which are ignored). */
export function isUnknownMountOption(item: string): boolean {
  const key = item.split('=')[0]!
  if (IGNORED.has(key) || IGNORED_PREFIXES.some((p) => item.startsWith(p))) return false
  return !(key.replace(/-/g, '_') in MOUNT_OPTIONS)
}

/**
 * Parses one or more `-o` lists. Unknown options are a usage error naming them, unless `sloppy` (mount -s),
 * when they are ignored.
 */
export function parseMountOptions(lists: string[], options: { sloppy?: boolean } = {}): ParsedMountOptions {
  const parsed: ParsedMountOptions = { command: {}, global: {}, ignored: [] }
  for (const item of lists.flatMap(splitOptions)) {
    const eq = item.indexOf('=')
    const rawKey = eq < 0 ? item : item.slice(0, eq)
    const value = eq < 0 ? undefined : item.slice(eq + 1)
    if (IGNORED.has(rawKey) || IGNORED_PREFIXES.some((p) => item.startsWith(p))) { parsed.ignored.push(item); continue }
    const s = MOUNT_OPTIONS[rawKey.replace(/-/g, '_')]
    if (!s) {
      if (options.sloppy) { parsed.ignored.push(item); continue }
      throw new UsageError(`unknown mount option ${JSON.stringify(rawKey)} (known: ${Object.keys(MOUNT_OPTIONS).join(', ')})`)
    }
    if (s.value && (value === undefined || value === '')) throw new UsageError(`mount option ${rawKey} needs a value (${rawKey}=…, as ${s.flag} takes one)`)
    if (!s.value && value !== undefined) throw new UsageError(`mount option ${rawKey} takes no value (it is the switch ${s.flag})`)
    const v: string | true = s.implies ?? value ?? true
    const into = s.global ? parsed.global : parsed.command
    if (s.repeatable) {
      const list = (parsed.command[s.attr] as string[] | undefined) ?? []
      parsed.command[s.attr] = [...list, String(v)]
      continue
    }
    const before = into[s.attr]
    if (before !== undefined && before !== v) throw new UsageError(`mount option ${rawKey} is given twice with different values`)
    ;(into as Record<string, string | true>)[s.attr] = v
  }
  return parsed
}

/**
 * Merges `-o` values into the values of the flags. A value given both ways must agree; a flag left at its
 * default takes the `-o` value. `explicit(attr)` tells whether the flag was given on the command line.
 */
export function mergeMountOptions<T extends object>(flags: T, fromO: Record<string, string | true | string[]>, explicit: (attr: string) => boolean): T {
  const out = { ...flags } as Record<string, unknown>
  for (const [attr, v] of Object.entries(fromO)) {
    if (Array.isArray(v)) {
      out[attr] = [...((out[attr] as string[] | undefined) ?? []), ...v]
      continue
    }
    if (explicit(attr) && out[attr] !== v) {
      throw new UsageError(`${flagOf(attr)} and -o disagree (${JSON.stringify(out[attr])} and ${JSON.stringify(v)})`)
    }
    out[attr] = v
  }
  return out as T
}

function flagOf(attr: string): string {
  return Object.values(MOUNT_OPTIONS).find((s) => s.attr === attr)?.flag ?? attr
}
