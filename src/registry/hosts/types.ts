/**
 * Where a repository's bytes may come from, as a node's container-runtime configuration says: mirrors, pull-through
 * caches, a Dragonfly dfdaemon, then the registry itself. Plain data only: worker threads receive it in a client
 * config and must behave the same.
 */

/** containerd's host capabilities: `resolve` turns tags into digests, `pull` serves digests (manifests and blobs). */
export type HostCapability = 'pull' | 'resolve' | 'push'

export interface EndpointTls {
  /** PEM CA bundles trusted in addition to the system's. */
  caFiles: string[]
  /** Client certificate and key files; an empty key means the certificate file holds the key too. */
  clientPairs: Array<[cert: string, key: string]>
  skipVerify: boolean
}

/** One host to try for a repository, in the order the configuration gives. */
export interface RegistryEndpoint {
  /** scheme://host[:port] */
  origin: string
  /** The URL path before `/<repository>/…`: `/v2`, or a mirror's own path. */
  apiPath: string
  /** host[:port] as contacted: the key for credentials, auth challenges and tokens. */
  host: string
  /** The repository name at this host (registries.conf `location` may rewrite it). */
  repository: string
  capabilities: HostCapability[]
  /** The registry the reference names (or its registries.conf `location`), as opposed to a mirror. */
  upstream: boolean
  /** containerd's `?ns=<registry>` on requests to a host other than the reference's registry. */
  ns?: string
  /** Sent with every request to this host (hosts.toml `[host.header]`, `--header`). */
  headers: Record<string, string>
  tls: EndpointTls
  /** Connect timeout for this host (hosts.toml `dial_timeout`). */
  dialTimeoutMs?: number
  /** A Dragonfly dfdaemon (it was given an `X-Dragonfly-Registry` header): prefetch requests say so. */
  dragonfly: boolean
  /** The file that described this host, for the log ('' when no file did). */
  source: string
}

/** Which node configuration decides the hosts of a registry. */
export type HostsSource = 'auto' | 'containerd' | 'crio' | 'none'

/** The plain-data options of host selection (part of RegistryClientConfig). */
export interface HostsConfig {
  /** auto (default): containerd's hosts.toml when one exists for the registry, else CRI-O's registries.conf, else direct. */
  source?: HostsSource
  /** containerd certs.d roots, searched in order (`--hosts-dir`, or config_path of containerd's config.toml). */
  hostsDirs?: string[]
  /** containerd's config.toml, read for config_path when hostsDirs is not given. Default /etc/containerd/config.toml. */
  containerdConfig?: string
  /** registries.conf files in the order they apply (the main file, then its drop-ins are found beside it). */
  registriesConf?: RegistriesConfPaths
  /** Docker-layout certificate roots for CRI-O endpoints (`/etc/containers/certs.d`, `/etc/docker/certs.d`). */
  containersCertDirs?: string[]
}

export interface RegistriesConfPaths {
  /** The main file; absent files are skipped. */
  file: string
  /** Directories of `*.conf` drop-ins, applied in name order after the file. */
  dropInDirs: string[]
}
