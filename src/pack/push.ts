import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { lstat, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join, relative, sep } from 'node:path'
import { Readable } from 'node:stream'
import type { RegistryClient } from '../registry/client.js'
import { OCI_MANIFEST } from '../registry/media-types.js'
import { manifestSelector, type ImageReference } from '../registry/reference.js'
import { runBounded } from '../index/build.js'
import { artifactTypeFor, configTypeFor, layerTypeFor } from '../modelpack/media-types.js'
import type { LayerKind, OciDescriptor, OciManifest } from '../modelpack/types.js'
import { sha256Digest } from '../util/digest.js'
import { UsageError } from '../util/errors.js'
import { classifyFile, KIND_ORDER } from './classify.js'
import { compressLayer, type Compression } from './compress.js'
import { tarHeaderFor, tarTrailerFor } from './tar-writer.js'

export type PackFormat = 'raw' | 'tar' | 'tar+gzip' | 'tar+zstd'
export const PACK_FORMATS: PackFormat[] = ['raw', 'tar', 'tar+gzip', 'tar+zstd']

export interface PushOptions {
  format: PackFormat
  /** Write the legacy `vnd.cnai` names (spec ≤ v0.0.6, modctl ≤ v0.1.2). */
  legacy?: boolean
  name?: string
  concurrency?: number
  onProgress?: (doneBytes: number, totalBytes: number) => void
}

interface SourceFile {
  path: string // relative, '/'-separated
  absolute: string
  size: number
  mode: number
  uid: number
  gid: number
  mtimeMs: number
  kind: LayerKind
}

interface PreparedLayer {
  file: SourceFile
  descriptor: OciDescriptor
  /** Bytes around the file's content in the (uncompressed) tar (empty for raw). */
  head: Buffer
  tail: Buffer
  /** sha256 of the uncompressed content: the config's diffId (equal to the digest unless compressed). */
  diffId: string
  /** Compressed layers: the compressed blob, written to a temp file. */
  compressedPath?: string
}

export interface PushResult {
  digest: string
  manifest: OciManifest
  files: number
  bytes: number
}

/** Regular files under `dir`, recursively; symlinks and special files are skipped (modctl packs files only). */
async function listFiles(dir: string): Promise<SourceFile[]> {
  const out: SourceFile[] = []
  const walk = async (d: string) => {
    for (const ent of await readdir(d, { withFileTypes: true })) {
      const abs = join(d, ent.name)
      if (ent.isDirectory()) { await walk(abs); continue }
      if (!ent.isFile()) continue
      const st = await lstat(abs)
      const path = relative(dir, abs).split(sep).join('/')
      out.push({ path, absolute: abs, size: st.size, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtimeMs: st.mtimeMs, kind: classifyFile(path) })
    }
  }
  await walk(dir)
  out.sort((a, b) => KIND_ORDER.indexOf(a.kind) - KIND_ORDER.indexOf(b.kind) || (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
  return out
}

/** The blob as pushed: the compressed file, or the (tar-wrapped) source file. */
function blobStream(layer: PreparedLayer): Readable {
  return layer.compressedPath ? createReadStream(layer.compressedPath, { highWaterMark: 1024 * 1024 }) : contentStream(layer)
}

/** The uncompressed content: the file, or its single-entry tar. */
function contentStream(layer: PreparedLayer): Readable {
  const { head, tail, file } = layer
  return Readable.from((async function* () {
    if (head.length) yield head
    if (file.size > 0) yield* createReadStream(file.absolute, { highWaterMark: 1024 * 1024 })
    if (tail.length) yield tail
  })())
}

let tempCounter = 0

async function prepareLayer(file: SourceFile, format: PackFormat, family: 'cncf' | 'cnai', tempDir: () => Promise<string>): Promise<PreparedLayer> {
  const mtimeSec = Math.floor(file.mtimeMs / 1000)
  const isTar = format !== 'raw'
  const head = isTar ? tarHeaderFor({ name: file.path, size: file.size, mode: file.mode, uid: file.uid, gid: file.gid, mtimeSec }) : Buffer.alloc(0)
  const tail = isTar ? tarTrailerFor(file.size) : Buffer.alloc(0)
  const layer: PreparedLayer = { file, head, tail, diffId: '', descriptor: { mediaType: layerTypeFor(family, file.kind, format), digest: '', size: head.length + file.size + tail.length } }
  const hash = createHash('sha256')
  for await (const chunk of contentStream(layer)) hash.update(chunk as Buffer)
  layer.diffId = 'sha256:' + hash.digest('hex')
  layer.descriptor.digest = layer.diffId
  const compression: Compression | undefined = format === 'tar+gzip' ? 'gzip' : format === 'tar+zstd' ? 'zstd' : undefined
  if (compression) {
    const path = join(await tempDir(), `layer-${++tempCounter}.${compression}`)
    const c = await compressLayer(contentStream(layer), compression, path)
    Object.assign(layer.descriptor, { digest: c.digest, size: c.size })
    layer.compressedPath = path
  }
  const metadata = {
    name: basename(file.path), mode: file.mode, uid: file.uid, gid: file.gid, size: file.size,
    mtime: new Date(mtimeSec * 1000).toISOString(), typeflag: 0,
  }
  layer.descriptor.annotations = {
    [`org.${family}.model.filepath`]: file.path,
    [`org.${family}.model.file.metadata+json`]: JSON.stringify(metadata),
  }
  return layer
}

/**
 * Packs a directory the way modctl does (one file per layer, classified into weight / weight.config / code /
 * doc, path and metadata annotations, a config with diffIds) and pushes it. Tests and the demo use it.
 */
export async function pushDirectory(client: RegistryClient, ref: ImageReference, dir: string, options: PushOptions): Promise<PushResult> {
  const family = options.legacy ? 'cnai' : 'cncf'
  const files = await listFiles(dir).catch((err: NodeJS.ErrnoException) => {
    throw new UsageError(`cannot read directory ${dir}: ${err.code ?? err.message}`)
  })
  if (files.length === 0) throw new UsageError(`${dir} has no files to push`)
  const layers: PreparedLayer[] = new Array(files.length)
  let temp: Promise<string> | undefined
  const tempDir = () => (temp ??= mkdtemp(join(tmpdir(), 'cnaifs-push-')))
  try {
    return await pushPrepared(client, ref, files, layers, family, options, tempDir)
  } finally {
    if (temp) await rm(await temp, { recursive: true, force: true })
  }
}

async function pushPrepared(client: RegistryClient, ref: ImageReference, files: SourceFile[], layers: PreparedLayer[], family: 'cncf' | 'cnai', options: PushOptions, tempDir: () => Promise<string>): Promise<PushResult> {
  await runBounded(files.map((f, i) => [f, i] as const), 4, async ([f, i]) => {
    layers[i] = await prepareLayer(f, options.format, family, tempDir)
  })
  const total = layers.reduce((n, l) => n + l.descriptor.size, 0)
  let done = 0
  options.onProgress?.(0, total)
  await runBounded(layers, options.concurrency ?? 4, async (layer) => {
    await client.pushBlob(ref, layer.descriptor.digest, layer.descriptor.size, () => blobStream(layer))
    done += layer.descriptor.size
    options.onProgress?.(done, total)
  })

  const created = new Date().toISOString()
  const diffIds = layers.map((l) => l.diffId) // sha256 of the uncompressed content (= digest unless compressed)
  const config = {
    descriptor: { name: options.name ?? ref.repository.split('/').pop(), [family === 'cncf' ? 'createdAt' : 'created_at']: created },
    config: {},
    modelfs: { type: 'layers', [family === 'cncf' ? 'diffIds' : 'diff_ids']: diffIds },
  }
  const configBytes = Buffer.from(JSON.stringify(config))
  const configDigest = sha256Digest(configBytes)
  await client.pushBlob(ref, configDigest, configBytes.length, configBytes)
  const manifest: OciManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: artifactTypeFor(family),
    config: { mediaType: configTypeFor(family), digest: configDigest, size: configBytes.length },
    layers: layers.map((l) => l.descriptor),
    annotations: { 'org.opencontainers.image.created': created },
  }
  const manifestBytes = Buffer.from(JSON.stringify(manifest))
  const digest = await client.putManifest(ref, manifestSelector(ref), manifestBytes, OCI_MANIFEST)
  return { digest, manifest, files: files.length, bytes: total }
}
