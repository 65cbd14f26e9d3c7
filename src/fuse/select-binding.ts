/**
 * Which FUSE binding serves a mount: our fuse3 addon when it was built and loads, else fuse-native.
 * CNAIFS_FUSE=fuse3|fuse-native forces one; forcing one that cannot load is an error that says what to
 * install. Both are loaded lazily, so a machine without libfuse 2 can still run fuse3 and vice versa.
 */
import { createRequire } from 'node:module'
import type { BindingName, FuseBinding } from './binding.js'
import { CnaifsError, errorMessage } from '../util/errors.js'

export interface SelectedBinding {
  binding: FuseBinding
  /** Why this one, for the mount's log line: "fuse3 addon loaded (libfuse 3.14.0)", "CNAIFS_FUSE=fuse-native" … */
  reason: string
}

const FUSE3_MISSING_HINT = 'install fuse3 and libfuse3-dev (plus build-essential, pkg-config, python3) and rebuild: npm rebuild'
const FUSE_NATIVE_MISSING_HINT = 'install libfuse2 (fuse-native needs libfuse.so.2) and reinstall: npm ci'

/** One line on why the addon did not load: the loader's message without its require stack. */
function firstLine(err: unknown): string {
  return errorMessage(err).split('\n')[0]
}

async function loadFuse3(): Promise<{ binding: FuseBinding; version: string }> {
  const { Fuse3Binding, loadFuse3Native } = await import('./fuse3-binding.js')
  const native = loadFuse3Native()
  return { binding: new Fuse3Binding(native), version: native.version() }
}

async function loadFuseNative(): Promise<FuseBinding> {
  // fuse-native loads its prebuilt addon (and libfuse.so.2) at require time: check that before importing
  // our binding, so the error names the library rather than a module path.
  createRequire(import.meta.url)('fuse-native')
  const { FuseNativeBinding } = await import('./fuse-native-binding.js')
  return new FuseNativeBinding()
}

/**
 * Picks the binding. `env` is process.env by default (CNAIFS_FUSE). Throws CnaifsError('ENOFUSE') when the
 * forced binding, or both, cannot be loaded.
 */
export async function loadBinding(env: NodeJS.ProcessEnv = process.env): Promise<SelectedBinding> {
  const forced = env.CNAIFS_FUSE?.trim()
  if (forced) {
    if (forced !== 'fuse3' && forced !== 'fuse-native') {
      throw new CnaifsError('EUSAGE', `CNAIFS_FUSE must be fuse3 or fuse-native, not ${JSON.stringify(forced)}`)
    }
    return loadForced(forced)
  }
  let fuse3Error: unknown
  try {
    const { binding, version } = await loadFuse3()
    return { binding, reason: `fuse3 addon loaded (${version})` }
  } catch (err) {
    fuse3Error = err
  }
  try {
    const binding = await loadFuseNative()
    return { binding, reason: `fuse3 addon not available (${firstLine(fuse3Error)}); using fuse-native` }
  } catch (err) {
    throw new CnaifsError('ENOFUSE',
      `no FUSE binding can be loaded: the fuse3 addon: ${firstLine(fuse3Error)} (${FUSE3_MISSING_HINT}); fuse-native: ${firstLine(err)} (${FUSE_NATIVE_MISSING_HINT})`,
      { cause: err })
  }
}

async function loadForced(name: BindingName): Promise<SelectedBinding> {
  try {
    if (name === 'fuse3') {
      const { binding, version } = await loadFuse3()
      return { binding, reason: `CNAIFS_FUSE=fuse3 (${version})` }
    }
    return { binding: await loadFuseNative(), reason: 'CNAIFS_FUSE=fuse-native' }
  } catch (err) {
    const hint = name === 'fuse3' ? FUSE3_MISSING_HINT : FUSE_NATIVE_MISSING_HINT
    throw new CnaifsError('ENOFUSE', `CNAIFS_FUSE=${name}, but it cannot be loaded: ${firstLine(err)} (${hint})`, { cause: err })
  }
}
