import { Command, Option } from 'commander'
import { BlobCache } from '../../cache/blob-cache.js'
import { CompressedIndexStore } from '../../compressed/index-store.js'
import { IndexStore, listIndexes } from '../../index/store.js'
import { formatReference, parseReference } from '../../registry/reference.js'
import { CnaifsError, UsageError } from '../../util/errors.js'
import { createLogger } from '../../util/log.js'
import { formatBytes, parseSize } from '../../util/progress.js'
import { defaultCacheDir } from '../context.js'
import { table } from '../format.js'
import { globals } from '../options.js'

async function openCache(cmd: Command): Promise<{ cacheDir: string; cache: BlobCache; store: IndexStore }> {
  const g = globals(cmd)
  const cacheDir = g.cacheDir ?? defaultCacheDir()
  // Cache upkeep never talks to a registry; one worker does the hashing of `verify`.
  const cache = new BlobCache({ cacheDir, client: {}, workers: 1, log: createLogger(g.logLevel ?? 'warn') })
  await cache.init()
  return { cacheDir, cache, store: new IndexStore(cacheDir) }
}

export function registerCacheCommands(program: Command): void {
  const cacheCmd = program.command('cache').description('look after the local cache: list, measure, prune, verify, remove models')

  cacheCmd.command('ls')
    .description('list cached models with how much of each is on disk')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const { cache, store } = await openCache(cmd)
      const indexes = await listIndexes(store)
      for (const ix of indexes) for (const l of ix.layers) await cache.describe(l)
      const rows = indexes.map((ix) => {
        const size = ix.layers.reduce((n, l) => n + l.size, 0)
        const cached = ix.layers.reduce((n, l) => n + cache.cachedBytes(l, 0, l.size), 0)
        return { reference: ix.reference, digest: ix.manifestDigest, layers: ix.layers.length, size, cached }
      })
      await cache.close()
      if (opts.json) { process.stdout.write(JSON.stringify(rows, null, 2) + '\n'); return }
      if (!rows.length) { process.stdout.write('no cached models\n'); return }
      process.stdout.write(table([['REFERENCE', 'DIGEST', 'LAYERS', 'SIZE', 'CACHED'],
        ...rows.map((r) => [r.reference, r.digest.slice(0, 19), String(r.layers), formatBytes(r.size), `${formatBytes(r.cached)} (${r.size ? ((r.cached / r.size) * 100).toFixed(1) : '100.0'}%)`])]) + '\n')
    })

  cacheCmd.command('du')
    .description('disk used by the block cache, per blob')
    .action(async (_opts: object, cmd: Command) => {
      const { cache, cacheDir } = await openCache(cmd)
      const blobs = await cache.listBlobs()
      await cache.close()
      const total = blobs.reduce((n, b) => n + b.bytes, 0)
      if (blobs.length) {
        process.stdout.write(table([['BLOB', 'BYTES', 'SIZE', 'COMPLETE', 'VERIFIED', 'LAST ACCESS'],
          ...blobs.map((b) => [b.digest, formatBytes(b.bytes), b.size === undefined ? '?' : formatBytes(b.size),
            b.complete ? 'yes' : 'no', b.verified ? 'yes' : 'no', b.lastAccess.toISOString()])]) + '\n')
      }
      process.stdout.write(`total ${formatBytes(total)} (${total} bytes) in ${blobs.length} blobs under ${cacheDir}\n`)
    })

  cacheCmd.command('prune')
    .description('evict least recently used blobs until the block cache is within --max-size')
    .addOption(new Option('--max-size <size>', 'size to prune to, e.g. 20G (0 empties the block cache)').makeOptionMandatory())
    .action(async (opts: { maxSize: string }, cmd: Command) => {
      let max: number
      try { max = parseSize(opts.maxSize) } catch (err) { throw new UsageError(`--max-size: ${(err as Error).message}`) }
      const { cache } = await openCache(cmd)
      const r = await cache.prune(max)
      const left = cache.diskBytes()
      await cache.close()
      process.stdout.write(`removed ${r.removedBlobs} blobs (${formatBytes(r.removedBytes)}); ${formatBytes(left)} left\n`)
    })

  cacheCmd.command('verify')
    .description('re-hash every complete blob in the cache; damaged ones are removed (exit 6 if any)')
    .action(async (_opts: object, cmd: Command) => {
      const { cache } = await openCache(cmd)
      let bad = 0
      let checked = 0
      for (const b of await cache.listBlobs()) {
        if (!b.complete || b.size === undefined) continue
        checked++
        if (!(await cache.verifyBlob({ digest: b.digest, size: b.size }))) {
          bad++
          await cache.removeBlob(b.digest)
          process.stdout.write(`BAD ${b.digest}: removed\n`)
        }
      }
      await cache.close()
      process.stdout.write(`verified ${checked} complete blobs, ${bad} damaged\n`)
      if (bad) throw new CnaifsError('ECORRUPT', `${bad} damaged blobs were removed from the cache`)
    })

  cacheCmd.command('rm')
    .description('remove one model\'s index and the blocks no other cached model uses')
    .argument('<ref>', 'image reference (tag or digest) as it was mounted or listed')
    .action(async (reference: string, _opts: object, cmd: Command) => {
      const { cache, store, cacheDir } = await openCache(cmd)
      const ref = parseReference(reference)
      const digest = ref.digest ?? (await store.loadRef(formatReference(ref)))?.manifestDigest
      const all = await listIndexes(store)
      const target = all.find((ix) => ix.manifestDigest === digest)
      if (!target) { await cache.close(); throw new UsageError(`${reference} is not in the cache (see cnaifs cache ls)`) }
      const keep = new Set(all.filter((ix) => ix !== target).flatMap((ix) => ix.layers.map((l) => l.digest)))
      let removed = 0
      for (const l of target.layers) {
        if (keep.has(l.digest)) continue
        await cache.removeBlob(l.digest)
        removed++
      }
      // A checkpoint index is kept per compressed blob: removed with the last cached model that has the blob.
      const keepCompressed = new Set(all.filter((ix) => ix !== target).flatMap((ix) => ix.compressedBlobs))
      const compressedStore = new CompressedIndexStore(cacheDir)
      let removedCompressed = 0
      for (const d of target.compressedBlobs) {
        if (keepCompressed.has(d)) continue
        await compressedStore.remove(d)
        removedCompressed++
      }
      await store.remove(target.manifestDigest)
      await cache.close()
      process.stdout.write(`removed ${target.reference} (${target.manifestDigest}): index, ${removed} blobs${removedCompressed ? ` and ${removedCompressed} compressed-layer indexes` : ''}\n`)
    })
}
