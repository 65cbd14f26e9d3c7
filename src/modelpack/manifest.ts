import { assertDigest } from '../util/digest.js'
import { FormatError } from '../util/errors.js'
import { METADATA_ANNOTATIONS, MODEL_ARTIFACT_TYPES, MODEL_CONFIG_TYPES, PATH_ANNOTATIONS, UNTESTED_ANNOTATIONS, parseLayerMediaType } from './media-types.js'
import type { Family, FileMetadata, ModelLayer, ModelManifest, OciDescriptor, OciManifest } from './types.js'

function parseJson(bytes: Buffer | string, what: string): unknown {
  try {
    return JSON.parse(bytes.toString())
  } catch (err) {
    throw new FormatError(`${what} is not valid JSON: ${(err as Error).message}`)
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function stringMap(v: unknown, what: string): Record<string, string> {
  if (v === undefined || v === null) return {}
  if (!isObject(v)) throw new FormatError(`${what} must be an object of strings`)
  for (const [k, val] of Object.entries(v)) if (typeof val !== 'string') throw new FormatError(`${what}.${k} must be a string`)
  return v as Record<string, string>
}

export function parseDescriptor(v: unknown, what: string): OciDescriptor {
  if (!isObject(v)) throw new FormatError(`${what} is not an object`)
  if (typeof v.mediaType !== 'string' || v.mediaType === '') throw new FormatError(`${what} has no mediaType`)
  if (typeof v.digest !== 'string') throw new FormatError(`${what} has no digest`)
  assertDigest(v.digest, `${what}.digest`)
  if (typeof v.size !== 'number' || !Number.isSafeInteger(v.size) || v.size < 0) throw new FormatError(`${what} has an invalid size`)
  const d: OciDescriptor = { mediaType: v.mediaType, digest: v.digest, size: v.size }
  const annotations = stringMap(v.annotations, `${what}.annotations`)
  if (Object.keys(annotations).length) d.annotations = annotations
  if (typeof v.artifactType === 'string') d.artifactType = v.artifactType
  return d
}

/** Parses and checks an OCI image manifest's structure (not yet whether it is a model). */
export function parseOciManifest(bytes: Buffer | string): OciManifest {
  const doc = parseJson(bytes, 'manifest')
  if (!isObject(doc)) throw new FormatError('manifest is not a JSON object')
  if (doc.schemaVersion !== 2) throw new FormatError(`manifest schemaVersion is ${JSON.stringify(doc.schemaVersion)}, expected 2`)
  if (!Array.isArray(doc.layers)) throw new FormatError('manifest has no layers array')
  return {
    schemaVersion: 2,
    mediaType: typeof doc.mediaType === 'string' ? doc.mediaType : undefined,
    artifactType: typeof doc.artifactType === 'string' ? doc.artifactType : undefined,
    config: parseDescriptor(doc.config, 'manifest config'),
    layers: doc.layers.map((l, i) => parseDescriptor(l, `manifest layer ${i}`)),
    annotations: stringMap(doc.annotations, 'manifest annotations'),
  }
}

/** The family of a model manifest, or undefined when it is not a model at all. */
export function modelFamily(m: Pick<OciManifest, 'artifactType' | 'config'>): Family | undefined {
  if (m.artifactType && MODEL_ARTIFACT_TYPES[m.artifactType]) return MODEL_ARTIFACT_TYPES[m.artifactType]
  return MODEL_CONFIG_TYPES[m.config.mediaType]
}

/**
 * Parses a ModelPack (either family) or KitOps manifest into layers with their kind, form, path and metadata.
 * A manifest that is not a model is rejected naming its artifactType and config type.
 */
export function parseModelManifest(bytes: Buffer | string, digest: string): ModelManifest {
  const raw = parseOciManifest(bytes)
  const family = modelFamily(raw)
  if (!family) {
    throw new FormatError(
      `not a model artifact: artifactType ${raw.artifactType ?? '(none)'}, config mediaType ${raw.config.mediaType}`
        + ' (expected a CNCF ModelPack, legacy CNAI or KitOps manifest)',
    )
  }
  const layers = raw.layers.map((d, index) => parseLayer(d, index))
  return { digest, family, artifactType: raw.artifactType, config: raw.config, layers, annotations: raw.annotations ?? {}, raw }
}

function parseLayer(descriptor: OciDescriptor, index: number): ModelLayer {
  const type = parseLayerMediaType(descriptor.mediaType)
  if (!type) throw new FormatError(`layer ${index} (${descriptor.digest}): unsupported media type ${descriptor.mediaType}`)
  const a = descriptor.annotations ?? {}
  const layer: ModelLayer = { index, descriptor, ...type }
  const path = PATH_ANNOTATIONS.map((k) => a[k]).find((v) => v !== undefined && v !== '')
  if (path !== undefined) layer.path = path
  const metaKey = METADATA_ANNOTATIONS.find((k) => a[k] !== undefined)
  if (metaKey) layer.metadata = parseFileMetadata(a[metaKey], `layer ${index} annotation ${metaKey}`)
  if (UNTESTED_ANNOTATIONS.some((k) => a[k] === 'true')) layer.untested = true
  return layer
}

const TYPEFLAGS: Record<string, FileMetadata['type']> = {
  '0': 'file', '48': 'file', '5': 'directory', '53': 'directory', '2': 'symlink', '50': 'symlink',
}

/** The file metadata annotation: mode as decimal permission bits, RFC 3339 mtime, numeric or char typeflag. */
export function parseFileMetadata(text: string, what: string): FileMetadata {
  const doc = parseJson(text, what)
  if (!isObject(doc)) throw new FormatError(`${what} is not a JSON object`)
  const meta: FileMetadata = {}
  if (typeof doc.name === 'string') meta.name = doc.name
  const num = (key: string): number | undefined => {
    const v = doc[key]
    if (v === undefined || v === null) return undefined
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new FormatError(`${what}: ${key} must be a non-negative integer`)
    return v
  }
  const mode = num('mode')
  if (mode !== undefined) meta.mode = mode & 0o7777
  meta.uid = num('uid')
  meta.gid = num('gid')
  meta.size = num('size')
  if (typeof doc.mtime === 'string') {
    const ms = Date.parse(doc.mtime)
    if (Number.isNaN(ms)) throw new FormatError(`${what}: mtime ${JSON.stringify(doc.mtime)} is not RFC 3339`)
    meta.mtimeMs = Math.max(0, ms) // Go's zero time (year 1) and other pre-epoch stamps show as the epoch
  }
  if (doc.typeflag !== undefined) {
    const t = TYPEFLAGS[String(doc.typeflag)]
    if (!t) throw new FormatError(`${what}: unsupported typeflag ${JSON.stringify(doc.typeflag)}`)
    meta.type = t
  }
  for (const k of ['uid', 'gid', 'size'] as const) if (meta[k] === undefined) delete meta[k]
  return meta
}
