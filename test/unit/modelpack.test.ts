import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { parseModelConfig } from '../../src/modelpack/config.js'
import { modelFamily, parseFileMetadata, parseModelManifest, parseOciManifest } from '../../src/modelpack/manifest.js'
import { artifactTypeFor, configTypeFor, layerTypeFor, parseLayerMediaType } from '../../src/modelpack/media-types.js'
import { resolveModel } from '../../src/modelpack/resolve.js'
import type { LayerForm, LayerKind } from '../../src/modelpack/types.js'
import type { FetchedManifest, RegistryClient } from '../../src/registry/client.js'
import { manifestSelector, parseReference, type ImageReference } from '../../src/registry/reference.js'
import { FormatError } from '../../src/util/errors.js'

const FIXTURES = fileURLToPath(new URL('../fixtures/', import.meta.url))
const fixture = (name: string): Buffer => readFileSync(join(FIXTURES, name))
const digestOf = (b: Buffer | string): string => 'sha256:' + createHash('sha256').update(b).digest('hex')
const D = (n: number): string => `sha256:${n.toString(16).padStart(64, '0')}`

const KINDS: LayerKind[] = ['weight', 'weight.config', 'doc', 'code', 'dataset']
const FORMS: LayerForm[] = ['raw', 'tar', 'tar+gzip', 'tar+zstd']

function manifest(o: { artifactType?: string; configType: string; layers: { mediaType: string; annotations?: Record<string, string>; size?: number }[]; annotations?: Record<string, string> }): string {
  return JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    ...(o.artifactType ? { artifactType: o.artifactType } : {}),
    config: { mediaType: o.configType, digest: D(1), size: 2 },
    layers: o.layers.map((l, i) => ({ mediaType: l.mediaType, digest: D(100 + i), size: l.size ?? 10, ...(l.annotations ? { annotations: l.annotations } : {}) })),
    ...(o.annotations ? { annotations: o.annotations } : {}),
  })
}

describe('fixtures (documents copied from the spec and modctl)', () => {
  it('includes every fixture in these tests', () => {
    expect(readdirSync(FIXTURES).filter((f) => f.endsWith('.json')).sort()).toEqual([
      '01-modelpack-spec-manifest-cncf.json',
      '02-modelpack-config-cncf-camelCase.json',
      '03-cloudnativeai-spec-manifest-cnai-legacy.json',
      '04-cloudnativeai-config-cnai-legacy-snake_case.json',
      '05-modctl-inspect_test-manifest-cnai-with-filepath-annotations.json',
      '06-modctl-inspect_test-config-legacy-diff_ids-null.json',
    ])
  })

  it('01: the spec\'s current (cncf) manifest', () => {
    const bytes = fixture('01-modelpack-spec-manifest-cncf.json')
    const m = parseModelManifest(bytes, digestOf(bytes))
    expect(m.family).toBe('cncf')
    expect(m.digest).toBe(digestOf(bytes))
    expect(m.artifactType).toBe('application/vnd.cncf.model.manifest.v1+json')
    expect(m.config).toMatchObject({ mediaType: 'application/vnd.cncf.model.config.v1+json', size: 301 })
    expect(m.layers.map((l) => [l.index, l.kind, l.form, l.family, l.path])).toEqual([
      [0, 'weight', 'tar', 'cncf', undefined],
      [1, 'weight', 'tar', 'cncf', undefined],
      [2, 'weight.config', 'tar', 'cncf', undefined],
      [3, 'doc', 'tar', 'cncf', undefined],
    ])
    expect(m.layers[1]!.descriptor.size).toBe(5018536960) // > 4 GiB sizes survive
    expect(m.annotations).toEqual({})
  })

  it('03: the legacy (cnai) manifest of the same model', () => {
    const bytes = fixture('03-cloudnativeai-spec-manifest-cnai-legacy.json')
    const m = parseModelManifest(bytes, digestOf(bytes))
    expect(m.family).toBe('cnai')
    expect(m.layers.map((l) => `${l.family}:${l.kind}:${l.form}`)).toEqual(['cnai:weight:tar', 'cnai:weight:tar', 'cnai:weight.config:tar', 'cnai:doc:tar'])
    // Same layers as the cncf document, only the names differ.
    const current = parseModelManifest(fixture('01-modelpack-spec-manifest-cncf.json'), D(9))
    expect(m.layers.map((l) => l.descriptor.digest)).toEqual(current.layers.map((l) => l.descriptor.digest))
  })

  it('05: modctl\'s legacy manifest with org.cnai.model.filepath annotations', () => {
    const bytes = fixture('05-modctl-inspect_test-manifest-cnai-with-filepath-annotations.json')
    const m = parseModelManifest(bytes, digestOf(bytes))
    expect(m.family).toBe('cnai')
    expect(m.layers.map((l) => l.path)).toEqual([
      'LICENSE', 'README.md', 'config.json', 'foo/bar.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'vocab.json',
    ])
    expect(m.layers.map((l) => l.kind)).toEqual(['doc', 'doc', ...Array(6).fill('weight.config')])
    expect(m.layers.every((l) => l.form === 'tar' && l.metadata === undefined && !l.untested)).toBe(true)
  })

  it('02: the current camelCase config', () => {
    expect(parseModelConfig(fixture('02-modelpack-config-cncf-camelCase.json'))).toEqual({
      name: 'xyz-3-8B-Instruct',
      family: 'xyz3',
      version: '3.1',
      revision: '1234567890',
      createdAt: '2025-01-01T00:00:00Z',
      authors: ['xyz@xyz.com'],
      licenses: ['Apache-2.0'],
      architecture: 'transformer',
      format: 'pt',
      paramSize: '8b',
      precision: 'float16',
      quantization: 'gptq',
      diffIds: [
        'sha256:1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef',
        'sha256:abcdef1234567890abcdef1234567890abcdef1234567890abcdef1234567890',
      ],
    })
  })

  it('04: the legacy snake_case config (diff_ids)', () => {
    const c = parseModelConfig(fixture('04-cloudnativeai-config-cnai-legacy-snake_case.json'))
    expect(c).toMatchObject({ name: 'xyz-3-8B-Instruct', format: 'pytorch', precision: 'fp16', paramSize: '8b', quantization: 'gptq' })
    expect(c.diffIds).toHaveLength(2)
  })

  it('06: modctl\'s config with "diff_ids": null', () => {
    const c = parseModelConfig(fixture('06-modctl-inspect_test-config-legacy-diff_ids-null.json'))
    expect(c).toEqual({
      name: 'Qwen2.5-0.5B', family: 'qwen2', createdAt: '2025-02-12T17:01:43.968027+08:00',
      architecture: 'transformer', format: 'tensorflow', paramSize: '0.5b', precision: 'int8', quantization: 'gptq',
      diffIds: null,
    })
  })
})

describe('layer media types', () => {
  const cases = (['cncf', 'cnai'] as const).flatMap((family) => KINDS.flatMap((kind) => FORMS.map((form) => [family, kind, form] as const)))

  it('covers 5 kinds x 4 forms x 2 families', () => {
    expect(cases).toHaveLength(40)
    expect(new Set(cases.map(([f, k, o]) => layerTypeFor(f, k, o))).size).toBe(40)
  })

  it.each(cases)('%s %s %s', (family, kind, form) => {
    const type = layerTypeFor(family, kind, form)
    expect(type).toBe(`application/vnd.${family}.model.${kind}.v1.${form}`)
    expect(parseLayerMediaType(type)).toEqual({ family, kind, form })
  })

  it('reads unknown weight forms that are not tars (.safetensors, .gguf) as raw', () => {
    expect(parseLayerMediaType('application/vnd.cncf.model.weight.v1.safetensors')).toEqual({ family: 'cncf', kind: 'weight', form: 'raw' })
    expect(parseLayerMediaType('application/vnd.cnai.model.weight.v1.gguf')).toEqual({ family: 'cnai', kind: 'weight', form: 'raw' })
  })

  it('refuses unknown tar compressions and foreign types', () => {
    for (const t of [
      'application/vnd.cncf.model.weight.v1.tar+xz',
      'application/vnd.cncf.model.weight.v2.raw',
      'application/vnd.cncf.model.weights.v1.raw',
      'application/vnd.oci.image.layer.v1.tar',
      'application/vnd.oci.image.layer.v1.tar+gzip',
      'application/octet-stream',
      '',
    ]) expect(parseLayerMediaType(t), t).toBeUndefined()
  })

  it.each([
    ['model', 'weight'], ['modelpart', 'weight'], ['dataset', 'dataset'], ['code', 'code'], ['docs', 'doc'], ['prompts', 'doc'],
  ] as const)('KitOps %s layers are %s', (kitKind, kind) => {
    for (const form of ['tar', 'tar+gzip', 'tar+zstd', 'raw'] as const) {
      expect(parseLayerMediaType(`application/vnd.kitops.modelkit.${kitKind}.v1.${form}`)).toEqual({ family: 'kitops', kind, form })
    }
    // a compressed single file cannot be read at random offsets
    expect(parseLayerMediaType(`application/vnd.kitops.modelkit.${kitKind}.v1.raw+gzip`)).toBeUndefined()
  })

  it('names artifact and config types of both families', () => {
    expect(artifactTypeFor('cncf')).toBe('application/vnd.cncf.model.manifest.v1+json')
    expect(artifactTypeFor('cnai')).toBe('application/vnd.cnai.model.manifest.v1+json')
    expect(configTypeFor('cncf')).toBe('application/vnd.cncf.model.config.v1+json')
    expect(configTypeFor('cnai')).toBe('application/vnd.cnai.model.config.v1+json')
  })
})

describe('parseModelManifest', () => {
  it('recognises a model by its config type when artifactType is missing (old artifacts)', () => {
    const m = parseModelManifest(manifest({ configType: configTypeFor('cnai'), layers: [{ mediaType: layerTypeFor('cnai', 'weight', 'tar') }] }), D(7))
    expect(m.family).toBe('cnai')
    expect(m.artifactType).toBeUndefined()
    expect(modelFamily({ config: { mediaType: configTypeFor('cncf'), digest: D(1), size: 1 } })).toBe('cncf')
  })

  it('recognises KitOps ModelKits with and without artifactType', () => {
    const layers = [{ mediaType: 'application/vnd.kitops.modelkit.model.v1.tar' }, { mediaType: 'application/vnd.kitops.modelkit.docs.v1.tar' }]
    const old = parseModelManifest(manifest({ configType: 'application/vnd.kitops.modelkit.config.v1+json', layers }), D(7))
    expect(old.family).toBe('kitops')
    expect(old.layers.map((l) => l.kind)).toEqual(['weight', 'doc'])
    const current = parseModelManifest(manifest({ artifactType: 'application/vnd.kitops.modelkit.manifest.v1+json', configType: 'application/vnd.kitops.modelkit.config.v1+json', layers }), D(7))
    expect(current.family).toBe('kitops')
  })

  it('rejects a manifest that is not a model, naming its artifactType and config type', () => {
    const image = manifest({ configType: 'application/vnd.oci.image.config.v1+json', layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' }] })
    expect(() => parseModelManifest(image, D(1))).toThrow(FormatError)
    expect(() => parseModelManifest(image, D(1))).toThrow(/not a model artifact: artifactType \(none\), config mediaType application\/vnd\.oci\.image\.config\.v1\+json/)
    const helm = manifest({ artifactType: 'application/vnd.cncf.helm.chart.v1', configType: 'application/vnd.cncf.helm.config.v1+json', layers: [] })
    expect(() => parseModelManifest(helm, D(1))).toThrow(/artifactType application\/vnd\.cncf\.helm\.chart\.v1, config mediaType application\/vnd\.cncf\.helm\.config\.v1\+json/)
  })

  it('rejects a foreign layer type inside a model, naming the layer', () => {
    const m = manifest({ artifactType: artifactTypeFor('cncf'), configType: configTypeFor('cncf'), layers: [{ mediaType: layerTypeFor('cncf', 'doc', 'raw') }, { mediaType: 'application/vnd.oci.image.layer.v1.tar' }] })
    expect(() => parseModelManifest(m, D(1))).toThrow(/layer 1 \(sha256:0+65\): unsupported media type application\/vnd\.oci\.image\.layer\.v1\.tar/)
  })

  it('takes the path from the cncf annotation, then the cnai one, then the OCI title', () => {
    const m = parseModelManifest(manifest({
      artifactType: artifactTypeFor('cncf'),
      configType: configTypeFor('cncf'),
      layers: [
        { mediaType: layerTypeFor('cncf', 'weight', 'raw'), annotations: { 'org.cncf.model.filepath': 'a', 'org.cnai.model.filepath': 'b', 'org.opencontainers.image.title': 'c' } },
        { mediaType: layerTypeFor('cncf', 'weight', 'raw'), annotations: { 'org.cnai.model.filepath': 'b', 'org.opencontainers.image.title': 'c' } },
        { mediaType: layerTypeFor('cncf', 'weight', 'raw'), annotations: { 'org.opencontainers.image.title': 'c' } },
        { mediaType: layerTypeFor('cncf', 'weight', 'raw'), annotations: { 'org.cncf.model.filepath': '', 'org.opencontainers.image.title': 'd' } },
        { mediaType: layerTypeFor('cncf', 'weight', 'raw') },
      ],
    }), D(1))
    expect(m.layers.map((l) => l.path)).toEqual(['a', 'b', 'c', 'd', undefined])
  })

  it('reads the file metadata annotation of either family and the "untested" flag', () => {
    const meta = (o: object) => JSON.stringify(o)
    const m = parseModelManifest(manifest({
      artifactType: artifactTypeFor('cnai'),
      configType: configTypeFor('cnai'),
      layers: [
        { mediaType: layerTypeFor('cnai', 'weight', 'raw'), annotations: { 'org.cncf.model.file.metadata+json': meta({ mode: 420 }), 'org.cncf.model.file.mediatype.untested': 'true' } },
        { mediaType: layerTypeFor('cnai', 'weight', 'raw'), annotations: { 'org.cnai.model.file.metadata+json': meta({ mode: 384 }), 'org.cnai.model.file.mediatype.untested': 'false' } },
        { mediaType: layerTypeFor('cnai', 'weight', 'raw'), annotations: { 'org.cnai.model.file.metadata': meta({ mode: 256 }), 'org.cnai.model.file.mediatype.untested': 'true' } },
      ],
    }), D(1))
    expect(m.layers.map((l) => l.metadata?.mode)).toEqual([0o644, 0o600, 0o400])
    expect(m.layers.map((l) => l.untested ?? false)).toEqual([true, false, true])
  })

  it('rejects structurally broken manifests with a FormatError', () => {
    const good = JSON.parse(manifest({ configType: configTypeFor('cncf'), layers: [{ mediaType: layerTypeFor('cncf', 'doc', 'raw') }] }))
    const broken: [unknown, RegExp][] = [
      ['not json', /not valid JSON/],
      [[], /not a JSON object/],
      [{ ...good, schemaVersion: 1 }, /schemaVersion is 1/],
      [{ ...good, layers: undefined }, /no layers array/],
      [{ ...good, config: undefined }, /config is not an object/],
      [{ ...good, config: { ...good.config, digest: 'md5:abc' } }, /not a sha256 digest/],
      [{ ...good, layers: [{ ...good.layers[0], size: -1 }] }, /layer 0 has an invalid size/],
      [{ ...good, layers: [{ ...good.layers[0], size: 1.5 }] }, /invalid size/],
      [{ ...good, layers: [{ ...good.layers[0], mediaType: '' }] }, /no mediaType/],
      [{ ...good, layers: [{ ...good.layers[0], annotations: { a: 1 } }] }, /annotations\.a must be a string/],
    ]
    for (const [doc, message] of broken) {
      const text = typeof doc === 'string' ? doc : JSON.stringify(doc)
      expect(() => parseModelManifest(text, D(1)), text).toThrow(FormatError)
      expect(() => parseModelManifest(text, D(1)), text).toThrow(message)
    }
    expect(parseOciManifest(JSON.stringify(good)).layers).toHaveLength(1)
  })
})

describe('file metadata annotation', () => {
  const parse = (o: unknown) => parseFileMetadata(JSON.stringify(o), 'meta')

  it('reads modctl\'s fields: decimal mode, RFC 3339 mtime with nanoseconds, numeric typeflag', () => {
    expect(parse({ name: 'model.safetensors', mode: 420, uid: 1000, gid: 100, size: 12345, mtime: '2025-02-12T17:01:43.968027123+08:00', typeflag: 0 })).toEqual({
      name: 'model.safetensors', mode: 0o644, uid: 1000, gid: 100, size: 12345, mtimeMs: Date.UTC(2025, 1, 12, 9, 1, 43, 968), type: 'file',
    })
    expect(parse({ mtime: '2024-01-01T00:00:00.123456789Z' }).mtimeMs).toBe(Date.UTC(2024, 0, 1, 0, 0, 0, 123))
    expect(parse({ mtime: '2024-06-01T12:00:00Z' }).mtimeMs).toBe(Date.UTC(2024, 5, 1, 12))
  })

  it.each([
    [0, 'file'], [48, 'file'], ['0', 'file'],
    [5, 'directory'], [53, 'directory'], ['5', 'directory'],
    [2, 'symlink'], [50, 'symlink'], ['2', 'symlink'],
  ] as const)('typeflag %j is a %s', (typeflag, type) => {
    expect(parse({ typeflag }).type).toBe(type)
  })

  it('keeps only permission bits of a mode that carries the file type', () => {
    expect(parse({ mode: 0o100644 }).mode).toBe(0o644)
    expect(parse({ mode: 0o4755 }).mode).toBe(0o4755)
  })

  it('keeps the relative path AIKit writes as name and ignores unknown keys', () => {
    expect(parse({ name: 'models/llama/model.gguf', linkname: '', devmajor: 0, xattrs: { a: 'b' } })).toEqual({ name: 'models/llama/model.gguf' })
    expect(parse({})).toEqual({})
    expect(parse({ uid: null, gid: null, mode: null })).toEqual({})
  })

  it.each([
    [{ typeflag: 1 }, /unsupported typeflag 1/],
    [{ typeflag: 'x' }, /unsupported typeflag "x"/],
    [{ mode: -1 }, /mode must be a non-negative integer/],
    [{ mode: '0644' }, /mode must be a non-negative integer/],
    [{ size: 1.5 }, /size must be/],
    [{ mtime: 'yesterday' }, /not RFC 3339/],
    [[], /not a JSON object/],
  ])('rejects %j', (doc, message) => {
    expect(() => parse(doc)).toThrow(FormatError)
    expect(() => parse(doc)).toThrow(message)
  })

  it('rejects text that is not JSON, naming where it came from', () => {
    expect(() => parseFileMetadata('{mode: 420}', 'layer 3 annotation x')).toThrow(/^layer 3 annotation x is not valid JSON/)
  })
})

describe('parseModelConfig', () => {
  it('accepts {} and configs without optional parts', () => {
    expect(parseModelConfig('{}')).toEqual({})
    expect(parseModelConfig(Buffer.from('{"descriptor":{},"config":{},"modelfs":{}}'))).toEqual({})
  })

  it('reads camelCase and snake_case spellings', () => {
    expect(parseModelConfig(JSON.stringify({ descriptor: { createdAt: 'a' }, config: { paramSize: '7b' }, modelfs: { diffIds: [D(1)] } }))).toEqual({ createdAt: 'a', paramSize: '7b', diffIds: [D(1)] })
    expect(parseModelConfig(JSON.stringify({ descriptor: { created_at: 'b' }, config: { param_size: '8b' }, modelfs: { diff_ids: [D(2)] } }))).toEqual({ createdAt: 'b', paramSize: '8b', diffIds: [D(2)] })
  })

  it('distinguishes diff_ids null from absent', () => {
    expect(parseModelConfig('{"modelfs":{"diff_ids":null}}').diffIds).toBeNull()
    expect(parseModelConfig('{"modelfs":{"diffIds":null}}').diffIds).toBeNull()
    expect('diffIds' in parseModelConfig('{"modelfs":{"type":"layers"}}')).toBe(false)
  })

  it('reads the misspelled "puantization" of very old configs', () => {
    expect(parseModelConfig('{"config":{"puantization":"awq"}}').quantization).toBe('awq')
    expect(parseModelConfig('{"config":{"quantization":"gptq","puantization":"awq"}}').quantization).toBe('gptq')
  })

  it('reads a KitOps Kitfile\'s package as the descriptor', () => {
    const kitfile = { manifestVersion: '1.0.0', package: { name: 'kit', version: '1.0', authors: ['me'], license: 'Apache-2.0' }, model: { name: 'm', path: 'model.gguf' } }
    expect(parseModelConfig(JSON.stringify(kitfile))).toEqual({ name: 'kit', version: '1.0', authors: ['me'], licenses: ['Apache-2.0'] })
  })

  it('turns numbers into strings and ignores values of the wrong type', () => {
    expect(parseModelConfig('{"descriptor":{"version":3,"name":["x"]},"config":{"paramSize":8}}')).toEqual({ version: '3', paramSize: '8' })
    expect(parseModelConfig('{"descriptor":"x","config":[1]}')).toEqual({})
  })

  it('rejects what is not a JSON object', () => {
    for (const text of ['', 'nope', '[]', 'null', '"x"']) expect(() => parseModelConfig(text), text).toThrow(FormatError)
  })
})

describe('resolveModel', () => {
  const model = manifest({ artifactType: artifactTypeFor('cncf'), configType: configTypeFor('cncf'), layers: [{ mediaType: layerTypeFor('cncf', 'weight', 'raw'), annotations: { 'org.cncf.model.filepath': 'w' } }] })
  const legacyModel = manifest({ configType: configTypeFor('cnai'), layers: [{ mediaType: layerTypeFor('cnai', 'weight', 'tar') }] })
  const image = manifest({ configType: 'application/vnd.oci.image.config.v1+json', layers: [] })
  const index = (entries: { body: string; artifactType?: string; mediaType?: string }[]) => JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: entries.map((e) => ({ mediaType: e.mediaType ?? 'application/vnd.oci.image.manifest.v1+json', digest: digestOf(e.body), size: e.body.length, ...(e.artifactType ? { artifactType: e.artifactType } : {}) })),
  })

  /** A client serving manifests by tag or digest, recording what was asked. */
  function fakeClient(docs: Record<string, string>, mediaTypes: Record<string, string> = {}) {
    const asked: string[] = []
    const byDigest = new Map(Object.values(docs).map((b) => [digestOf(b), b]))
    const client = {
      async getManifest(r: ImageReference, sel?: string): Promise<FetchedManifest> {
        const selector = sel ?? manifestSelector(r) // the real client's default
        asked.push(selector)
        const body = docs[selector] ?? byDigest.get(selector)
        if (body === undefined) throw new Error(`no manifest ${selector}`)
        return { digest: digestOf(body), mediaType: mediaTypes[selector] ?? '', bytes: Buffer.from(body) }
      },
    }
    return { client: client as unknown as RegistryClient, asked }
  }
  const ref = parseReference('r.io/m:v1')

  it('returns a model manifest as is', async () => {
    const { client } = fakeClient({ v1: model })
    const r = await resolveModel(client, ref)
    expect(r.manifest.family).toBe('cncf')
    expect(r.manifest.digest).toBe(digestOf(model))
    expect(r.manifestBytes.toString()).toBe(model)
  })

  it('picks the child marked with a model artifactType without fetching the others', async () => {
    const idx = index([{ body: image }, { body: model, artifactType: artifactTypeFor('cncf') }])
    const { client, asked } = fakeClient({ v1: idx, other: image, m: model }, { v1: 'application/vnd.oci.image.index.v1+json' })
    const r = await resolveModel(client, ref)
    expect(r.manifest.digest).toBe(digestOf(model))
    expect(asked).toEqual(['v1', digestOf(model)])
  })

  it('without markers, fetches the children and keeps the one whose config is a model', async () => {
    const idx = index([{ body: image }, { body: legacyModel }])
    const { client } = fakeClient({ v1: idx, a: image, b: legacyModel })
    const r = await resolveModel(client, ref)
    expect(r.manifest.family).toBe('cnai')
    expect(r.manifestBytes.toString()).toBe(legacyModel)
  })

  it('refuses an index with no model or with several', async () => {
    const none = fakeClient({ v1: index([{ body: image }]), a: image })
    await expect(resolveModel(none.client, ref)).rejects.toThrow(/has no model manifest among its 1 entries/)
    const two = fakeClient({ v1: index([{ body: model }, { body: legacyModel }]), a: model, b: legacyModel })
    await expect(resolveModel(two.client, ref)).rejects.toThrow(/has 2 model manifests .*pin one with @sha256/)
  })

  it('names the artifactType and config type of a manifest that is not a model', async () => {
    const { client } = fakeClient({ v1: image })
    await expect(resolveModel(client, ref)).rejects.toThrow(/not a model artifact: artifactType \(none\), config mediaType application\/vnd\.oci\.image\.config\.v1\+json/)
  })
})
