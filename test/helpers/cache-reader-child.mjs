// A process that reads one blob sequentially through the blob cache (the built dist/), for tests that kill
// it mid-way. argv: cacheDir registryHost repo digest size durableBytes. Prints "durable" once the first
// `durableBytes` are read and recorded in the blob's map file, then keeps reading until killed or done.
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { BlobCache } from '../../dist/cache/blob-cache.js'
import { FileReader } from '../../dist/cache/file-reader.js'
import { parseReference } from '../../dist/registry/reference.js'

const [cacheDir, host, repo, digest, sizeText, durableText] = process.argv.slice(2)
const size = Number(sizeText)
const durableBytes = Number(durableText)
const MiB = 1024 * 1024
const cache = new BlobCache({ cacheDir, client: { credentialSource: { files: [] } }, workers: 1 })
await cache.init()
const source = { kind: 'registry', reference: parseReference(`${host}/${repo}:x`) }
const reader = new FileReader({ cache, sourceFor: () => source })
const handle = reader.open({ blob: { digest, size }, offset: 0, size })
const hex = digest.slice(7)
const mapPath = join(cacheDir, 'blobs', hex.slice(0, 2), `${hex}.map`)
for (let off = 0; off < size; off += MiB) {
  await reader.read(handle, off, MiB)
  if (off + MiB === durableBytes) {
    // The map file grows as slots are written (after the data file was synced).
    while ((await stat(mapPath)).size < 64 + (durableBytes / MiB) * 48) await new Promise((r) => setTimeout(r, 20))
    process.stdout.write('durable\n')
  }
}
process.stdout.write('done\n')
await cache.close()
