import { UsageError } from '../util/errors.js'

/**
 * An image reference: `host[:port]/repo[:tag][@sha256:…]`, with Docker's defaults for short names
 * (`ubuntu` → `registry-1.docker.io/library/ubuntu:latest`).
 */
export interface ImageReference {
  /** The host[:port] the API is served from (docker.io is rewritten to registry-1.docker.io). */
  readonly registry: string
  readonly repository: string
  readonly tag?: string
  readonly digest?: string
}

const DOCKER_HUB_API = 'registry-1.docker.io'
const DOCKER_HUB_NAMES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io'])
// distribution/reference grammar: path components of lowercase alphanumerics joined by separators.
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/
const TAG = /^[\w][\w.-]{0,127}$/
const DIGEST = /^sha256:[a-f0-9]{64}$/
const HOST = /^(?:\[[0-9a-fA-F:]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*)(?::[0-9]{1,5})?$/

export function parseReference(input: string): ImageReference {
  const fail = (why: string): never => {
    throw new UsageError(`invalid image reference ${JSON.stringify(input)}: ${why}`)
  }
  const text = input.trim()
  if (text === '') fail('empty')
  if (text.length > 1024) fail('too long')
  if (/^[a-z]+:\/\//i.test(text)) fail('write it without a scheme, as host/repository[:tag]')

  let rest = text
  let digest: string | undefined
  const at = rest.indexOf('@')
  if (at >= 0) {
    digest = rest.slice(at + 1)
    rest = rest.slice(0, at)
    if (!DIGEST.test(digest)) fail(`digest must be sha256:<64 hex digits>, got ${JSON.stringify(digest)}`)
  }

  let tag: string | undefined
  const lastSlash = rest.lastIndexOf('/')
  const colon = rest.lastIndexOf(':')
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    if (!TAG.test(tag)) fail(`invalid tag ${JSON.stringify(tag)}`)
  }

  const parts = rest.split('/')
  let registry: string
  // The first component is a host when it looks like one: it has a dot or a port, or is localhost.
  if (parts.length > 1 && (parts[0].includes('.') || parts[0].includes(':') || parts[0] === 'localhost' || parts[0].startsWith('['))) {
    registry = parts.shift() as string
    if (!HOST.test(registry)) fail(`invalid registry host ${JSON.stringify(registry)}`)
  } else {
    registry = 'docker.io'
  }
  if (DOCKER_HUB_NAMES.has(registry.toLowerCase())) {
    registry = DOCKER_HUB_API
    if (parts.length === 1) parts.unshift('library')
  }
  for (const p of parts) {
    if (!PATH_COMPONENT.test(p)) fail(`invalid repository path component ${JSON.stringify(p)} (lowercase letters, digits and . _ - only)`)
  }
  const repository = parts.join('/')
  if (repository.length > 255) fail('repository name longer than 255 characters')
  if (!tag && !digest) tag = 'latest'
  return { registry, repository, tag, digest }
}

export function formatReference(ref: ImageReference): string {
  let s = `${ref.registry}/${ref.repository}`
  if (ref.tag) s += `:${ref.tag}`
  if (ref.digest) s += `@${ref.digest}`
  return s
}

/** The value to put in the manifest URL: the digest when pinned, else the tag. */
export function manifestSelector(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? 'latest'
}

export function withDigest(ref: ImageReference, digest: string): ImageReference {
  return { ...ref, digest }
}
