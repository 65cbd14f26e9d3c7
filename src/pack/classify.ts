import { basename } from 'node:path'
import type { LayerKind } from '../modelpack/types.js'

// modctl's file classification (pkg/modelfile): config-ish files first, then weights, code and docs.
const CONFIG_NAMES = [/^config\.json$/i, /^generation_config\.json$/i, /^tokenizer.*$/i, /^special_tokens_map\.json$/i,
  /^vocab\./i, /^merges\.txt$/i, /^added_tokens\.json$/i, /^preprocessor_config\.json$/i, /^chat_template/i,
  /\.(json|jsonl|jinja|yaml|yml|toml|cfg|ini|conf|model)$/i]
const WEIGHT_EXT = /\.(safetensors|bin|pt|pth|ckpt|gguf|ggml|onnx|h5|hdf5|keras|pb|tflite|msgpack|pkl|pickle|npz|npy|mlmodel|engine|plan|params|ot|tar|zip)$/i
const CODE_EXT = /\.(py|pyi|ipynb|sh|bash|js|mjs|cjs|ts|go|rs|c|cc|cpp|h|hpp|java|scala|rb|lua|r|swift|kt|cu|cuh)$/i
const DOC_EXT = /\.(md|markdown|rst|txt|pdf|html?|png|jpe?g|gif|svg|webp|csv)$/i
const DOC_NAMES = /^(license|licence|readme|notice|copying|authors|changelog)(\..*)?$/i

/** Which ModelPack layer kind a file becomes, by name as modctl decides (unknown files are docs). */
export function classifyFile(path: string): LayerKind {
  const name = basename(path)
  if (DOC_NAMES.test(name)) return 'doc'
  if (WEIGHT_EXT.test(name)) return 'weight'
  if (CONFIG_NAMES.some((re) => re.test(name))) return 'weight.config'
  if (CODE_EXT.test(name)) return 'code'
  if (DOC_EXT.test(name)) return 'doc'
  return 'doc'
}

/** modctl's layer order: weight.config, weight, code, doc; by path within each kind. */
export const KIND_ORDER: LayerKind[] = ['weight.config', 'weight', 'code', 'doc', 'dataset']
