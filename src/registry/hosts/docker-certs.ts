import { readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { UsageError } from '../../util/errors.js'
import type { EndpointTls } from './types.js'

/**
 * Docker's certs.d layout, which containerd and containers-image also read: in a directory named after the host,
 * `*.crt` files are CA roots and each `NAME.cert` is a client certificate whose key is `NAME.key`.
 */
export function loadDockerCertDir(dir: string): EndpointTls | undefined {
  let names: string[]
  try {
    names = readdirSync(dir).sort()
  } catch {
    return undefined
  }
  const tls: EndpointTls = { caFiles: [], clientPairs: [], skipVerify: false }
  for (const name of names) {
    if (name.endsWith('.crt')) tls.caFiles.push(join(dir, name))
    else if (name.endsWith('.cert')) {
      const key = name.slice(0, -'.cert'.length) + '.key'
      if (!names.includes(key)) throw new UsageError(`${join(dir, name)}: client certificate without its key ${key}`)
      tls.clientPairs.push([join(dir, name), join(dir, key)])
    } else if (name.endsWith('.key')) {
      const cert = name.slice(0, -'.key'.length) + '.cert'
      if (!names.includes(cert)) throw new UsageError(`${join(dir, name)}: client key without its certificate ${cert}`)
    }
  }
  return tls
}

/** Certificates of the first root that has a directory for the host (host:port as written, as Docker does). */
export function findDockerCerts(roots: string[], host: string): { tls: EndpointTls; dir: string } | undefined {
  for (const root of roots) {
    const dir = join(root, host)
    if (!isDirectory(dir)) continue
    const tls = loadDockerCertDir(dir)
    if (tls) return { tls, dir }
  }
  return undefined
}

export function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory()
  } catch {
    return false
  }
}

export function emptyTls(): EndpointTls {
  return { caFiles: [], clientPairs: [], skipVerify: false }
}
