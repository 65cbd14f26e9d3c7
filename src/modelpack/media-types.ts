import type { Family, LayerForm, LayerKind } from './types.js'

export const MODEL_ARTIFACT_TYPES: Record<string, Family> = {
  'application/vnd.cncf.model.manifest.v1+json': 'cncf',
  'application/vnd.cnai.model.manifest.v1+json': 'cnai',
  'application/vnd.kitops.modelkit.manifest.v1+json': 'kitops',
}

export const MODEL_CONFIG_TYPES: Record<string, Family> = {
  'application/vnd.cncf.model.config.v1+json': 'cncf',
  'application/vnd.cnai.model.config.v1+json': 'cnai',
  'application/vnd.kitops.modelkit.config.v1+json': 'kitops',
}

export function artifactTypeFor(family: 'cncf' | 'cnai'): string {
  return `application/vnd.${family}.model.manifest.v1+json`
}
export function configTypeFor(family: 'cncf' | 'cnai'): string {
  return `application/vnd.${family}.model.config.v1+json`
}
export function layerTypeFor(family: 'cncf' | 'cnai', kind: LayerKind, form: LayerForm): string {
  return `application/vnd.${family}.model.${kind}.v1.${form}`
}

/** Annotation keys, current family first: the first one present wins. */
export const PATH_ANNOTATIONS = ['org.cncf.model.filepath', 'org.cnai.model.filepath', 'org.opencontainers.image.title']
export const METADATA_ANNOTATIONS = ['org.cncf.model.file.metadata+json', 'org.cnai.model.file.metadata+json', 'org.cnai.model.file.metadata']
export const UNTESTED_ANNOTATIONS = ['org.cncf.model.file.mediatype.untested', 'org.cnai.model.file.mediatype.untested']

const FORMS: LayerForm[] = ['raw', 'tar', 'tar+gzip', 'tar+zstd']
const MODELPACK_LAYER = /^application\/vnd\.(cncf|cnai)\.model\.(weight\.config|weight|doc|code|dataset)\.v1\.([a-z0-9.+-]+)$/
const KITOPS_LAYER = /^application\/vnd\.kitops\.modelkit\.(model|modelpart|dataset|code|docs|prompts)\.v1\.(tar|raw)(\+gzip|\+zstd)?$/
const KITOPS_KINDS: Record<string, LayerKind> = {
  model: 'weight', modelpart: 'weight', dataset: 'dataset', code: 'code', docs: 'doc', prompts: 'doc',
}

export interface ParsedLayerType {
  family: Family
  kind: LayerKind
  form: LayerForm
}

/**
 * Classifies a layer media type of either ModelPack family or KitOps. Unknown forms that are not tars
 * (`…weight.v1.safetensors`, `.gguf`) are raw: the blob is the file. Returns undefined for foreign types.
 */
export function parseLayerMediaType(mediaType: string): ParsedLayerType | undefined {
  const m = MODELPACK_LAYER.exec(mediaType)
  if (m) {
    const form = m[3] as LayerForm
    if (FORMS.includes(form)) return { family: m[1] as Family, kind: m[2] as LayerKind, form }
    if (form.startsWith('tar')) return undefined // an unknown tar compression: we cannot read it
    return { family: m[1] as Family, kind: m[2] as LayerKind, form: 'raw' }
  }
  const k = KITOPS_LAYER.exec(mediaType)
  if (k) {
    if (k[2] === 'raw' && k[3]) return undefined // a compressed single file: no random access, not supported
    return { family: 'kitops', kind: KITOPS_KINDS[k[1]], form: (k[2] + (k[3] ?? '')) as LayerForm }
  }
  return undefined
}
