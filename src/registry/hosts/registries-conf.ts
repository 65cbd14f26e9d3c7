import { readdirSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { UsageError } from '../../util/errors.js'
import { readTomlFile, TomlFields, isTable, type TomlTable } from './toml.js'
import type { RegistriesConfPaths } from './types.js'

export const SYSTEM_REGISTRIES_CONF = '/etc/containers/registries.conf'
export const SYSTEM_REGISTRIES_CONF_D = '/etc/containers/registries.conf.d'
export const CONTAINERS_CERT_DIRS = ['/etc/containers/certs.d', '/etc/docker/certs.d']

export type PullFromMirror = 'all' | 'digest-only' | 'tag-only'

export interface ConfMirror {
  location: string
  insecure: boolean
  pullFromMirror: PullFromMirror
}

/** One `[[registry]]` of registries.conf v2 (a v1 file's insecure and block lists become such entries too). */
export interface ConfRegistry {
  prefix: string
  /** Empty only for a wildcard prefix: the reference's own host is used. */
  location: string
  insecure: boolean
  blocked: boolean
  mirrorByDigestOnly: boolean
  mirrors: ConfMirror[]
  /** The file the entry came from (a later drop-in replaces an entry of the same prefix). */
  source: string
}

export interface RegistriesConf {
  registries: ConfRegistry[]
  /** Files read, in order (for messages). */
  files: string[]
}

/**
 * containers-image's lookup: $CONTAINERS_REGISTRIES_CONF, else the user's ~/.config/containers/registries.conf when it
 * exists, else /etc/containers/registries.conf; drop-ins from /etc/containers/registries.conf.d and then the user's
 * ~/.config/containers/registries.conf.d.
 */
export function defaultRegistriesConfPaths(env: NodeJS.ProcessEnv = process.env, exists: (p: string) => boolean): RegistriesConfPaths {
  const home = env.HOME ?? homedir()
  const userFile = join(home, '.config', 'containers', 'registries.conf')
  const userDropIns = join(home, '.config', 'containers', 'registries.conf.d')
  const file = env.CONTAINERS_REGISTRIES_CONF ?? (exists(userFile) ? userFile : SYSTEM_REGISTRIES_CONF)
  return { file, dropInDirs: [SYSTEM_REGISTRIES_CONF_D, userDropIns] }
}

/** An explicit `--registries-conf FILE`: that file and the drop-ins of `FILE.d` only, so nothing else on the node leaks in. */
export function explicitRegistriesConfPaths(file: string): RegistriesConfPaths {
  return { file, dropInDirs: [`${file}.d`] }
}

/** Reads the main file and its drop-ins. Undefined when none of them exists. */
export function loadRegistriesConf(paths: RegistriesConfPaths): RegistriesConf | undefined {
  const files = [paths.file, ...paths.dropInDirs.flatMap(dropIns)]
  const byPrefix = new Map<string, ConfRegistry>()
  const read: string[] = []
  for (const file of files) {
    const doc = readTomlFile(file)
    if (!doc) continue
    read.push(file)
    for (const r of parseRegistriesConf(doc, file)) {
      // A drop-in's entry for a prefix replaces the earlier one whole, as containers-image merges them.
      byPrefix.delete(r.prefix)
      byPrefix.set(r.prefix, r)
    }
  }
  if (!read.length) return undefined
  return { registries: [...byPrefix.values()], files: read }
}

function dropIns(dir: string): string[] {
  try {
    return readdirSync(dir).filter((n) => n.endsWith('.conf')).sort().map((n) => join(dir, n))
  } catch {
    return []
  }
}

export function parseRegistriesConf(doc: TomlTable, file: string): ConfRegistry[] {
  const f = new TomlFields(file, '')
  const out: ConfRegistry[] = []
  for (const [i, t] of f.tables(doc, 'registry').entries()) out.push(parseRegistry(t, file, i))
  // v1: [registries.insecure] registries = [...], [registries.block] registries = [...]
  if (isTable(doc.registries)) {
    const v1 = new TomlFields(file, 'registries.')
    for (const [list, flag] of [['insecure', 'insecure'], ['block', 'blocked']] as const) {
      const table = v1.table(doc.registries, list)
      for (const host of table ? new TomlFields(file, `registries.${list}.`).strings(table, 'registries') ?? [] : []) {
        const existing = out.find((r) => r.prefix === host)
        const entry = existing ?? { prefix: host, location: host, insecure: false, blocked: false, mirrorByDigestOnly: false, mirrors: [], source: file }
        entry[flag] = true
        if (!existing) out.push(entry)
      }
    }
  }
  return out
}

function parseRegistry(t: TomlTable, file: string, i: number): ConfRegistry {
  const where = `[[registry]] #${i + 1} `
  const f = new TomlFields(file, where)
  const location = stripSlash(f.string(t, 'location') ?? '')
  const prefix = stripSlash(f.string(t, 'prefix') ?? location)
  if (!prefix) throw new UsageError(`${file}: ${where}needs a location or a prefix`)
  const wildcard = prefix.startsWith('*.')
  if (wildcard && location) throw new UsageError(`${file}: ${where}a wildcard prefix ${prefix} cannot have a location`)
  if (!wildcard && !location) throw new UsageError(`${file}: ${where}needs a location`)
  if (prefix.includes('*') && !(wildcard && !prefix.slice(2).includes('*') && !prefix.includes('/'))) {
    throw new UsageError(`${file}: ${where}prefix ${prefix}: a wildcard is only allowed as *.domain`)
  }
  for (const loc of [location]) if (/^[a-z]+:\/\//i.test(loc)) throw new UsageError(`${file}: ${where}location ${loc} must not have a scheme`)
  const mirrors = f.tables(t, 'mirror').map((m, j): ConfMirror => {
    const mf = new TomlFields(file, `${where}mirror #${j + 1} `)
    const loc = stripSlash(mf.string(m, 'location') ?? '')
    if (!loc) throw new UsageError(`${file}: ${where}mirror #${j + 1} needs a location`)
    if (/^[a-z]+:\/\//i.test(loc)) throw new UsageError(`${file}: ${where}mirror location ${loc} must not have a scheme`)
    const pull = mf.string(m, 'pull-from-mirror') ?? 'all'
    if (pull !== 'all' && pull !== 'digest-only' && pull !== 'tag-only') {
      throw new UsageError(`${file}: ${where}mirror #${j + 1} pull-from-mirror must be all, digest-only or tag-only`)
    }
    return { location: loc, insecure: mf.boolean(m, 'insecure') ?? false, pullFromMirror: pull }
  })
  const mirrorByDigestOnly = f.boolean(t, 'mirror-by-digest-only') ?? false
  if (mirrorByDigestOnly && mirrors.some((m) => m.pullFromMirror !== 'all')) {
    throw new UsageError(`${file}: ${where}pull-from-mirror cannot be combined with mirror-by-digest-only`)
  }
  return {
    prefix, location,
    insecure: f.boolean(t, 'insecure') ?? false,
    blocked: f.boolean(t, 'blocked') ?? false,
    mirrorByDigestOnly, mirrors, source: file,
  }
}

function stripSlash(s: string): string {
  return s.replace(/\/+$/, '')
}

/**
 * How much of `name` (host/repository) a prefix matches: its length for `host[/path]` at a path boundary, the host's
 * length for `*.domain` when the host is a subdomain of it; -1 for no match.
 */
export function prefixMatchLength(name: string, prefix: string): number {
  if (prefix.startsWith('*.')) {
    const slash = name.indexOf('/')
    const host = slash < 0 ? name : name.slice(0, slash)
    return host.endsWith(prefix.slice(1)) ? host.length : -1
  }
  if (name === prefix) return prefix.length
  if (name.startsWith(prefix) && name[prefix.length] === '/') return prefix.length
  return -1
}

/** The entry with the longest matching prefix (containers-image's rule), or undefined. */
export function matchRegistry(conf: RegistriesConf, name: string): { registry: ConfRegistry; matched: number } | undefined {
  let best: { registry: ConfRegistry; matched: number } | undefined
  for (const registry of conf.registries) {
    const matched = prefixMatchLength(name, registry.prefix)
    // Longest prefix wins; between equal lengths a plain prefix beats a wildcard.
    if (matched < 0) continue
    const len = registry.prefix.startsWith('*.') ? registry.prefix.length - 1 : registry.prefix.length
    const bestLen = best ? (best.registry.prefix.startsWith('*.') ? best.registry.prefix.length - 1 : best.registry.prefix.length) : -1
    if (len > bestLen) best = { registry, matched }
  }
  return best
}

export interface PullSource {
  /** host[/path]/repository after rewriting. */
  name: string
  insecure: boolean
  mirror: boolean
}

/** Mirrors that apply to this pull, in order, then the primary location; `name` rewritten for each. */
export function pullSources(match: { registry: ConfRegistry; matched: number }, name: string, byDigest: boolean): PullSource[] {
  const r = match.registry
  const rest = name.slice(match.matched)
  const sources: PullSource[] = []
  for (const m of r.mirrors) {
    if (r.mirrorByDigestOnly && !byDigest) continue
    if (m.pullFromMirror === 'digest-only' && !byDigest) continue
    if (m.pullFromMirror === 'tag-only' && byDigest) continue
    sources.push({ name: m.location + rest, insecure: m.insecure, mirror: true })
  }
  sources.push({ name: r.location ? r.location + rest : name, insecure: r.insecure, mirror: false })
  return sources
}
