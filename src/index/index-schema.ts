/**
 * What a persisted index and a tag record must look like to be used. Everything a mount later trusts is
 * checked here: field types, paths that stay inside the model, the stored manifest against its digest, and
 * every file's extent against the size of the layer content it points into (a read past a blob's end would
 * go to the registry as a range it cannot serve).
 */
import { parseModelManifest } from '../modelpack/manifest.js'
import { sha256Digest } from '../util/digest.js'
import { errorMessage } from '../util/errors.js'
import { unsealJson } from '../util/sealed-json.js'
import {
  SchemaError, bounded, count, fail, finite, isPlainObject, literal, matching, object, oneOf, recordOf, string, type Check,
} from '../util/validate.js'
import type { ModelIndexFile, RefRecord } from './store.js'
import type { IndexEntry } from './tree.js'

/** Version 1 files (no checksum) were written before checksums; they are still read, checked by schema. */
export const INDEX_FORMAT_VERSION = 2
const READABLE_VERSIONS = [1, 2] as const

const DIGEST = matching(/^sha256:[a-f0-9]{64}$/, 'a sha256 digest')
const MODE = bounded(0o7777, 'permission bits (0 to 0o7777)')

/** A path inside the model: relative, no `..` component, no NUL. */
const modelPath: Check<string> = (v, f) => {
  const s = string(v, f)
  if (s.startsWith('/') || s.includes('\0') || s.split('/').includes('..')) fail(f, 'a relative path inside the model', v)
  return s
}

const meta = { path: modelPath, mode: MODE, uid: count, gid: count, mtimeMs: finite }
const directoryEntry = object({ ...meta, kind: literal('directory') })
const fileEntry = object({ ...meta, kind: literal('file'), size: count, layer: count, offset: count })
const symlinkEntry = object({ ...meta, kind: literal('symlink'), target: string })
const hardlinkEntry = object({ path: modelPath, kind: literal('hardlink'), link: modelPath })

export const indexEntry: Check<IndexEntry> = (v, f) => {
  if (!isPlainObject(v)) fail(f, 'an object', v)
  switch (v.kind) {
    case 'directory': return directoryEntry(v, f)
    case 'file': return fileEntry(v, f)
    case 'symlink': return symlinkEntry(v, f)
    case 'hardlink': return hardlinkEntry(v, f)
    default: return fail(`${f}.kind`, '"directory", "file", "symlink" or "hardlink"', v.kind)
  }
}

const entries: Check<IndexEntry[]> = (v, f) => {
  if (!Array.isArray(v)) fail(f, 'an array', v)
  return v.map((x, i) => indexEntry(x, `${f}[${i}]`))
}

const indexShape = object({
  version: oneOf(READABLE_VERSIONS),
  reference: string, manifestDigest: DIGEST, manifest: string, config: string, createdAt: string,
  defaultMtimeMs: finite, entries,
}, { layerViews: recordOf(/^(0|[1-9]\d*)$/, object({ digest: DIGEST, size: count })) })

/**
 * Parses and checks a persisted index file. `manifestDigest`: the digest the file must be for (its name).
 * Throws a SchemaError (or another CnaifsError) naming what is wrong.
 */
export function parseIndexFile(text: string, manifestDigest: string): ModelIndexFile {
  const { doc, sealed } = unsealJson(text)
  if (doc.version !== 1 && !sealed) throw new SchemaError('checksum', 'missing')
  const file: ModelIndexFile = indexShape(doc, '')
  if (file.manifestDigest !== manifestDigest) throw new SchemaError('manifestDigest', `is ${file.manifestDigest}, but the file is named for ${manifestDigest}`)
  if (sha256Digest(file.manifest) !== file.manifestDigest) throw new SchemaError('manifest', 'does not hash to manifestDigest')
  let layerSizes: number[]
  try {
    const manifest = parseModelManifest(file.manifest, file.manifestDigest)
    layerSizes = manifest.layers.map((l, i) => file.layerViews?.[i]?.size ?? l.descriptor.size)
  } catch (err) {
    throw new SchemaError('manifest', `is not a model manifest (${errorMessage(err)})`)
  }
  for (const k of Object.keys(file.layerViews ?? {})) {
    if (Number(k) >= layerSizes.length) throw new SchemaError(`layerViews.${k}`, `names a layer the manifest does not have (it has ${layerSizes.length})`)
  }
  file.entries.forEach((e, i) => {
    if (e.kind !== 'file') return
    const size = layerSizes[e.layer]
    if (size === undefined) throw new SchemaError(`entries[${i}].layer`, `is ${e.layer}, but the manifest has ${layerSizes.length} layers`)
    if (e.offset + e.size > size) throw new SchemaError(`entries[${i}]`, `bytes ${e.offset}+${e.size} run past the end of layer ${e.layer} (${size} bytes)`)
  })
  return file
}

const refShape = object({ reference: string, manifestDigest: DIGEST, resolvedAt: string })

/** Parses and checks a tag record; `reference` is the one the file is named for. */
export function parseRefRecord(text: string, reference: string): RefRecord {
  const { doc } = unsealJson(text) // records written before checksums had none; a schema check is enough for three fields
  const rec = refShape(doc, '')
  if (rec.reference !== reference) throw new SchemaError('reference', `is ${JSON.stringify(rec.reference)}, but the file is named for ${JSON.stringify(reference)}`)
  return rec
}
