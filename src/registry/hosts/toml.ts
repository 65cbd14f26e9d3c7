import { readFileSync } from 'node:fs'
import { parse } from 'smol-toml'
import { UsageError } from '../../util/errors.js'

export type TomlTable = Record<string, unknown>

/**
 * Reads a TOML file of the node's configuration. Returns undefined when the file does not exist (most nodes have
 * only some of these files); a file that cannot be read or parsed is a UsageError naming it.
 */
export function readTomlFile(file: string): TomlTable | undefined {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined
    throw new UsageError(`cannot read ${file}: ${(err as Error).message}`)
  }
  return parseToml(text, file)
}

export function parseToml(text: string, file: string): TomlTable {
  try {
    return parse(text) as TomlTable
  } catch (err) {
    throw new UsageError(`${file} is not valid TOML: ${(err as Error).message.split('\n')[0]}`)
  }
}

export function isTable(v: unknown): v is TomlTable {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date)
}

/** Typed field readers: a value of the wrong type is an error naming the file and key, never silently ignored. */
export class TomlFields {
  constructor(private readonly file: string, private readonly where: string) {}

  private fail(key: string, want: string): never {
    throw new UsageError(`${this.file}: ${this.where}${key} must be ${want}`)
  }

  string(t: TomlTable, key: string): string | undefined {
    const v = t[key]
    if (v === undefined) return undefined
    if (typeof v !== 'string') this.fail(key, 'a string')
    return v
  }

  boolean(t: TomlTable, key: string): boolean | undefined {
    const v = t[key]
    if (v === undefined) return undefined
    if (typeof v !== 'boolean') this.fail(key, 'true or false')
    return v
  }

  /** A string or an array of strings (containerd accepts both for `ca`, `capabilities`, header values). */
  strings(t: TomlTable, key: string): string[] | undefined {
    const v = t[key]
    if (v === undefined) return undefined
    if (typeof v === 'string') return [v]
    if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[]
    this.fail(key, 'a string or an array of strings')
  }

  table(t: TomlTable, key: string): TomlTable | undefined {
    const v = t[key]
    if (v === undefined) return undefined
    if (!isTable(v)) this.fail(key, 'a table')
    return v
  }

  tables(t: TomlTable, key: string): TomlTable[] {
    const v = t[key]
    if (v === undefined) return []
    if (!Array.isArray(v) || !v.every(isTable)) this.fail(key, 'an array of tables ([[' + key + ']])')
    return v as TomlTable[]
  }
}
