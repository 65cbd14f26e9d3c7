import { FormatError } from '../util/errors.js'
import type { ModelConfig } from './types.js'

type Json = Record<string, unknown>

function obj(v: unknown): Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : {}
}

/** The first of several spellings that holds a string (camelCase current, snake_case legacy). */
function str(o: Json, ...keys: string[]): string | undefined {
  for (const k of keys) {
    const v = o[k]
    if (typeof v === 'string' && v !== '') return v
    if (typeof v === 'number') return String(v)
  }
  return undefined
}

function strings(o: Json, ...keys: string[]): string[] | undefined {
  for (const k of keys) {
    const v = o[k]
    if (Array.isArray(v)) return v.filter((x): x is string => typeof x === 'string')
    // A Kitfile's `package.license` is one string, not a list.
    if (typeof v === 'string' && v !== '') return [v]
  }
  return undefined
}

/**
 * Parses a model config blob of either spelling. Producers write `{}` and `"diff_ids": null`, and very old
 * configs misspell quantization as `puantization`: all are accepted; only non-JSON is an error.
 */
export function parseModelConfig(bytes: Buffer | string): ModelConfig {
  let doc: unknown
  try {
    doc = JSON.parse(bytes.toString())
  } catch (err) {
    throw new FormatError(`model config is not valid JSON: ${(err as Error).message}`)
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new FormatError('model config is not a JSON object')
  const root = doc as Json
  // KitOps configs are the Kitfile: `package` holds the descriptor-like fields.
  const descriptor = obj(root.descriptor ?? root.package)
  const config = obj(root.config)
  const modelfs = obj(root.modelfs)
  const cfg: ModelConfig = {
    name: str(descriptor, 'name'),
    family: str(descriptor, 'family'),
    version: str(descriptor, 'version'),
    revision: str(descriptor, 'revision'),
    createdAt: str(descriptor, 'createdAt', 'created_at', 'created'),
    authors: strings(descriptor, 'authors'),
    licenses: strings(descriptor, 'licenses', 'license'),
    architecture: str(config, 'architecture'),
    format: str(config, 'format'),
    paramSize: str(config, 'paramSize', 'param_size'),
    precision: str(config, 'precision'),
    quantization: str(config, 'quantization', 'puantization'),
  }
  if ('diffIds' in modelfs || 'diff_ids' in modelfs) {
    const ids = modelfs.diffIds ?? modelfs.diff_ids
    cfg.diffIds = Array.isArray(ids) ? ids.filter((x): x is string => typeof x === 'string') : null
  }
  for (const k of Object.keys(cfg) as (keyof ModelConfig)[]) if (cfg[k] === undefined) delete cfg[k]
  return cfg
}
