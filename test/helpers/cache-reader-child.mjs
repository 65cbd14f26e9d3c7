// A process that reads one blob sequentially through the blob cache (the built dist/), for tests that kill
// it mid-way. argv: cacheDir registryHost repo digest size durableBytes. Prints "durable" once the first
// `durableBytes` are read and recorded in the blob's map file, then keeps reading until killed or done.
import { readFile } from 'node:fs/promises'
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
// A small read-ahead window, so the kill lands while this process is still fetching.
const reader = new FileReader({ cache, sourceFor: () => source, window: { maxWindowBytes: 2 * MiB } })
const handle = reader.open({ blob: { digest, size }, offset: 0, size })
const hex = digest.slice(7)
const mapPath = join(cacheDir, 'blobs', hex.slice(0, 2), `${hex}.map`)
for (let off = 0; off < size; off += MiB) {
  await reader.read(handle, off, MiB)
  if (off + MiB === durableBytes) {
    // Slots are written only after the data file was synced: wait until the first blocks' slots say present.
    const blocks = durableBytes / MiB
    const recorded = async () => {
      const map = await readFile(mapPath)
      for (let n = 0; n < blocks; n++) if (map.length < 64 + 48 * (n + 1) || map.readUInt32LE(64 + 48 * n) !== 0x324b4c42) return false
      return true
    }
    while (!(await recorded())) await new Promise((r) => setTimeout(r, 20))
    process.stdout.write('durable\n')
  }
}
process.stdout.write('done\n')
await cache.close()
