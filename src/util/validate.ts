/**
 * Small schema checks for documents cnaifs reads back from its own disk (indexes, tag records, compressed
 * indexes, runtime entries). A check returns the value typed, or throws a SchemaError naming the first field
 * that is wrong (`entries[3].path: expected a string, got 7`), so a damaged file is reported precisely.
 */
import { CnaifsError } from './errors.js'

export class SchemaError extends CnaifsError {
  constructor(readonly field: string, readonly problem: string) {
    super('EFORMAT', `${field || 'document'}: ${problem}`)
  }
}

export type Check<T> = (value: unknown, field: string) => T

function describe(v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'object') return 'an object'
  const s = JSON.stringify(v) ?? String(v)
  return s.length > 40 ? `${s.slice(0, 40)}…` : s
}

export function fail(field: string, expected: string, got: unknown): never {
  throw new SchemaError(field, `expected ${expected}, got ${describe(got)}`)
}

export const string: Check<string> = (v, f) => (typeof v === 'string' ? v : fail(f, 'a string', v))
export const boolean: Check<boolean> = (v, f) => (typeof v === 'boolean' ? v : fail(f, 'true or false', v))
export const finite: Check<number> = (v, f) => (typeof v === 'number' && Number.isFinite(v) ? v : fail(f, 'a number', v))
/** A non-negative safe integer: sizes, offsets, counts, ids. */
export const count: Check<number> = (v, f) => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : fail(f, 'a non-negative integer', v))

export function literal<const T extends string | number>(want: T): Check<T> {
  return (v, f) => (v === want ? want : fail(f, JSON.stringify(want), v))
}

export function oneOf<const T extends string | number>(values: readonly T[]): Check<T> {
  return (v, f) => ((values as readonly unknown[]).includes(v) ? (v as T) : fail(f, values.map((x) => JSON.stringify(x)).join(' or '), v))
}

export function matching(re: RegExp, what: string): Check<string> {
  return (v, f) => (typeof v === 'string' && re.test(v) ? v : fail(f, what, v))
}

export function bounded(max: number, what: string): Check<number> {
  return (v, f) => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max ? v : fail(f, what, v))
}

export function arrayOf<T>(item: Check<T>): Check<T[]> {
  return (v, f) => {
    if (!Array.isArray(v)) fail(f, 'an array', v)
    return v.map((x, i) => item(x, `${f}[${i}]`))
  }
}

/** A tuple of fixed length, every element checked by `item`. */
export function tupleOf<T>(item: Check<T>, length: number): Check<T[]> {
  return (v, f) => {
    if (!Array.isArray(v) || v.length !== length) fail(f, `an array of ${length}`, v)
    return v.map((x, i) => item(x, `${f}[${i}]`))
  }
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** An object with values of one kind under keys matching `key` (e.g. layer indexes). */
export function recordOf<T>(key: RegExp, value: Check<T>): Check<Record<string, T>> {
  return (v, f) => {
    if (!isPlainObject(v)) fail(f, 'an object', v)
    const out: Record<string, T> = {}
    for (const [k, x] of Object.entries(v)) {
      if (!key.test(k)) throw new SchemaError(`${f}.${k}`, 'unexpected key')
      out[k] = value(x, `${f}.${k}`)
    }
    return out
  }
}

type Shape = Record<string, Check<unknown>>
type Out<S extends Shape, O extends Shape> = { [K in keyof S]: ReturnType<S[K]> } & { [K in keyof O]?: ReturnType<O[K]> }

/**
 * An object with the `required` fields and, when present, the `optional` ones. Other fields are kept as they
 * are (a later version may add some), but never trusted: callers use only what was checked.
 */
export function object<S extends Shape, O extends Shape = Record<never, never>>(required: S, optional?: O): Check<Out<S, O>> {
  return (v, f) => {
    if (!isPlainObject(v)) fail(f, 'an object', v)
    const at = (k: string) => (f ? `${f}.${k}` : k)
    for (const [k, check] of Object.entries(required)) {
      if (!(k in v)) throw new SchemaError(at(k), 'missing')
      check(v[k], at(k))
    }
    for (const [k, check] of Object.entries(optional ?? {})) if (v[k] !== undefined) check(v[k], at(k))
    return v as Out<S, O>
  }
}

/** Parses JSON text, turning a syntax error into a SchemaError. */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text)
  } catch (err) {
    throw new SchemaError('', `not valid JSON (${(err as Error).message})`)
  }
}
