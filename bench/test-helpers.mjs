// The test suite's registry and counting proxy (test/helpers/*.ts), transpiled without a type check into
// WORK/helpers and imported: the benches count requests with the same code the tests trust.
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import ts from 'typescript'

const ROOT = fileURLToPath(new URL('..', import.meta.url))

/** @returns {Promise<{ startRegistry: Function, startProxy: Function }>} */
export async function loadTestHelpers(work) {
  const out = join(work, 'helpers')
  await mkdir(out, { recursive: true })
  await writeFile(join(out, 'package.json'), '{"type":"module"}\n')
  for (const name of ['registry', 'proxy']) {
    const source = await readFile(join(ROOT, 'test', 'helpers', `${name}.ts`), 'utf8')
    const { outputText } = ts.transpileModule(source, {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: false },
      fileName: `${name}.ts`,
    })
    await writeFile(join(out, `${name}.js`), outputText)
  }
  const registry = await import(pathToFileURL(join(out, 'registry.js')).href)
  const proxy = await import(pathToFileURL(join(out, 'proxy.js')).href)
  return { startRegistry: registry.startRegistry, startProxy: proxy.startProxy }
}
