/** Wire documents of the OCI image spec, as far as cnaifs reads them. */
export interface OciDescriptor {
  mediaType: string
  digest: string
  size: number
  annotations?: Record<string, string>
  artifactType?: string
  urls?: string[]
  platform?: { os?: string; architecture?: string }
}

export interface OciManifest {
  schemaVersion: number
  mediaType?: string
  artifactType?: string
  config: OciDescriptor
  layers: OciDescriptor[]
  annotations?: Record<string, string>
  subject?: OciDescriptor
}

export interface OciIndex {
  schemaVersion: number
  mediaType?: string
  artifactType?: string
  manifests: OciDescriptor[]
  annotations?: Record<string, string>
}

/** ModelPack layer kinds; KitOps kinds are mapped onto these. */
export type LayerKind = 'weight' | 'weight.config' | 'doc' | 'code' | 'dataset'
export type LayerForm = 'raw' | 'tar' | 'tar+gzip' | 'tar+zstd'
/** Which naming family a document uses: current ModelPack, legacy CNAI, or KitOps. */
export type Family = 'cncf' | 'cnai' | 'kitops'

/** The file metadata annotation (`org.cncf.model.file.metadata+json`), normalised. */
export interface FileMetadata {
  name?: string
  mode?: number
  uid?: number
  gid?: number
  size?: number
  /** Milliseconds since the epoch. */
  mtimeMs?: number
  type?: 'file' | 'directory' | 'symlink'
}

export interface ModelLayer {
  index: number
  descriptor: OciDescriptor
  kind: LayerKind
  form: LayerForm
  family: Family
  /** Where the layer goes: the path annotation (either family) or the OCI title. */
  path?: string
  metadata?: FileMetadata
  /** True when the producer said the media type was guessed. */
  untested?: boolean
}

/** The model-specific parts of the config blob, merged from both spellings. */
export interface ModelConfig {
  name?: string
  family?: string
  version?: string
  revision?: string
  createdAt?: string
  authors?: string[]
  licenses?: string[]
  architecture?: string
  format?: string
  paramSize?: string
  precision?: string
  quantization?: string
  diffIds?: string[] | null
}

export interface ModelManifest {
  digest: string
  family: Family
  artifactType?: string
  config: OciDescriptor
  layers: ModelLayer[]
  annotations: Record<string, string>
  /** The manifest bytes exactly as the registry served them (saved with the index). */
  raw: OciManifest
}
