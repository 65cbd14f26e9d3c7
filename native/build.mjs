#!/usr/bin/env node
// Builds the fuse3 addon (native/build/Release/cnaifs_fuse.node); run by `npm ci` / `npm install` / `npm
// rebuild` as the package's install script. Uses npm's own node-gyp against the headers installed with this
// Node (on Debian /usr/include/node), so nothing is downloaded. When the addon cannot be built (no compiler,
// no libfuse3-dev, no Node headers) it prints one warning and exits 0: cnaifs then uses fuse-native.
//
//   CNAIFS_SKIP_NATIVE=1   do not build (cnaifs uses fuse-native)
//   node native/build.mjs  build by hand (what `npm rebuild` runs)
import { spawnSync } from 'node:child_process'
import { existsSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const logFile = join(here, 'build.log')
const addon = join(here, 'build', 'Release', 'cnaifs_fuse.node')
const HINT = 'cnaifs will use fuse-native (libfuse 2, slower); to get the fuse3 binding install fuse3 libfuse3-dev build-essential pkg-config python3 and run `npm rebuild`'

function skip(reason) {
  process.stderr.write(`cnaifs: warning: the fuse3 addon was not built: ${reason}; ${HINT}\n`)
  process.exit(0)
}

function run(cmd, args, opts = {}) {
  return spawnSync(cmd, args, { encoding: 'utf8', ...opts })
}

function has(cmd, args = ['--version']) {
  const r = run(cmd, args)
  return !r.error && r.status === 0
}

if (process.env.CNAIFS_SKIP_NATIVE === '1') skip('CNAIFS_SKIP_NATIVE=1')
if (process.platform !== 'linux') skip(`${process.platform} is not Linux`)

// Node's headers, from the running node: <prefix>/bin/node → <prefix>/include/node (node-gyp's --nodedir).
const prefix = dirname(dirname(process.execPath))
if (!existsSync(join(prefix, 'include', 'node', 'node_api.h'))) skip(`no Node headers in ${join(prefix, 'include', 'node')}`)

// npm sets npm_config_node_gyp for lifecycle scripts; run by hand, use the node-gyp bundled with npm.
const nodeGypCandidates = [
  process.env.npm_config_node_gyp,
  process.env.npm_execpath && join(dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
].filter(Boolean)
const nodeGyp = nodeGypCandidates.find((p) => existsSync(p))
if (!nodeGyp) skip('node-gyp not found (it comes with npm)')

if (!has('cc')) skip('no C compiler (cc)')
if (!has('make')) skip('no make')
if (!has('pkg-config', ['--exists', 'fuse3'])) skip('libfuse3-dev is not installed (pkg-config fuse3)')

// gyp is Python; prefer the system's (a version manager's shim on PATH may point nowhere).
const env = { ...process.env }
if (!env.PYTHON && existsSync('/usr/bin/python3')) env.PYTHON = '/usr/bin/python3'
if (!env.PYTHON && !has('python3')) skip('no python3 (node-gyp needs it)')

const build = run(process.execPath, [nodeGyp, 'rebuild', '--release', `--nodedir=${prefix}`], { cwd: here, env })
writeFileSync(logFile, `${build.stdout ?? ''}${build.stderr ?? ''}${build.error ? String(build.error) : ''}`)
if (build.error || build.status !== 0) skip(`node-gyp failed (see ${logFile})`)

// Load it in a child: a missing libfuse3.so.3 (fuse3 not installed) only shows at load time.
const load = run(process.execPath, ['-e', `require(${JSON.stringify(addon)})`])
if (load.status !== 0) {
  const why = (load.stderr || '').split('\n').find((l) => /Error|cannot open/.test(l)) ?? 'it does not load'
  skip(`the built addon does not load: ${why.trim()}`)
}
process.stdout.write(`cnaifs: built the fuse3 addon (${addon})\n`)
