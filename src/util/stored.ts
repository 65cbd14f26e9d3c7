import { readFile } from 'node:fs/promises'
import { errorMessage } from './errors.js'

/**
 * A document read back from cnaifs' own disk: there and valid, absent (never written, or removed), or
 * present but unusable, with the file and the reason, so callers can rebuild it with one warning or fail
 * with one line naming the file.
 */
export type Stored<T> =
  | { state: 'ok'; value: T; path: string }
  | { state: 'absent'; path: string }
  | { state: 'invalid'; path: string; reason: string }

/** Reads and checks `path`; `parse` throws (any error) on a document it does not accept. */
export async function readStored<T>(path: string, parse: (text: string) => T): Promise<Stored<T>> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') return { state: 'absent', path }
    return { state: 'invalid', path, reason: `cannot be read (${code ?? errorMessage(err)})` }
  }
  try {
    return { state: 'ok', value: parse(text), path }
  } catch (err) {
    return { state: 'invalid', path, reason: errorMessage(err) }
  }
}

/** One line for logs and errors: "the cached index /x/y.json is invalid (entries[3].path: …)". */
export function describeInvalid(what: string, s: { path: string; reason: string }): string {
  return `${what} ${s.path} is invalid (${s.reason})`
}
