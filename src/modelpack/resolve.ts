import type { RegistryClient } from '../registry/client.js'
import { isIndexMediaType } from '../registry/media-types.js'
import type { ImageReference } from '../registry/reference.js'
import { FormatError } from '../util/errors.js'
import { modelFamily, parseDescriptor, parseModelManifest, parseOciManifest } from './manifest.js'
import { MODEL_ARTIFACT_TYPES } from './media-types.js'
import type { ModelManifest } from './types.js'

export interface ResolvedModel {
  manifest: ModelManifest
  /** The manifest bytes as served, saved with the index so a later mount needs no registry. */
  manifestBytes: Buffer
}

/**
 * Fetches the model manifest a reference names. When it names an index, the one child manifest that is a model
 * is chosen (by its descriptor's artifactType, or by fetching children and looking at their config type).
 */
export async function resolveModel(client: RegistryClient, ref: ImageReference, signal?: AbortSignal): Promise<ResolvedModel> {
  const top = await client.getManifest(ref, undefined, { signal })
  let doc: { mediaType?: unknown; manifests?: unknown }
  try {
    doc = JSON.parse(top.bytes.toString())
  } catch {
    throw new FormatError(`manifest of ${ref.repository} is not valid JSON`)
  }
  const isIndex = isIndexMediaType(top.mediaType) || isIndexMediaType(doc.mediaType as string) || Array.isArray(doc.manifests)
  if (!isIndex) return { manifest: parseModelManifest(top.bytes, top.digest), manifestBytes: top.bytes }

  const children = (doc.manifests as unknown[]).map((d, i) => parseDescriptor(d, `index entry ${i}`))
  const marked = children.filter((c) => c.artifactType && MODEL_ARTIFACT_TYPES[c.artifactType])
  const candidates: ResolvedModel[] = []
  for (const child of marked.length ? marked : children) {
    if (isIndexMediaType(child.mediaType)) continue // nested indexes are not followed: models are never built that way
    const fetched = await client.getManifest(ref, child.digest, { signal })
    const parsed = parseOciManifest(fetched.bytes)
    if (modelFamily(parsed)) candidates.push({ manifest: parseModelManifest(fetched.bytes, fetched.digest), manifestBytes: fetched.bytes })
  }
  if (candidates.length === 0) throw new FormatError(`the index ${top.digest} has no model manifest among its ${children.length} entries`)
  if (candidates.length > 1) {
    throw new FormatError(`the index ${top.digest} has ${candidates.length} model manifests (${candidates.map((c) => c.manifest.digest).join(', ')}): pin one with @sha256:…`)
  }
  return candidates[0]
}
