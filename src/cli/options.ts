import { Option, type Command } from 'commander'
import type { GlobalCliOptions } from './context.js'

const collect = (value: string, previous: string[] = []): string[] => [...previous, value]

/** Registry options shared by every command that talks to a registry. */
export function addRegistryOptions(cmd: Command): Command {
  return cmd
    .option('--plain-http', 'use HTTP instead of HTTPS (default for localhost/127.0.0.1 only)')
    .option('--insecure', 'skip TLS certificate verification')
    .option('--ca-file <path>', 'PEM file of a private CA to trust')
    .option('--username <name>', 'registry user name (the password is read from stdin with --password-stdin)')
    .option('--password-stdin', 'read the registry password from stdin')
    .option('--authfile <path>', 'credentials file (Docker config.json / podman auth.json format) to use instead of the default ones')
    .option('-H, --header <name:value>', 'HTTP header for every request to the registry and its mirrors (repeatable)', collect)
    .option('--request-timeout <seconds>', 'time allowed for a registry request: its response headers within it, the whole request within it plus 1 s per MiB', '30')
    .addOption(new Option('--registry-config <source>', 'which node configuration names mirrors: auto (containerd hosts.toml, else CRI-O registries.conf), containerd, crio, none').choices(['auto', 'containerd', 'crio', 'none']).default('auto'))
    .option('--hosts-dir <dirs>', 'containerd hosts.toml directories, ":"-separated (default: config_path of /etc/containerd/config.toml, else /etc/containerd/certs.d:/etc/docker/certs.d)')
    .option('--containerd-config <file>', 'containerd config.toml to read config_path from', '/etc/containerd/config.toml')
    .option('--registries-conf <file>', 'CRI-O / containers registries.conf (with drop-ins in FILE.d/) instead of the system and user ones')
    .option('--dragonfly-prefetch-priority <n>', 'X-Dragonfly-Priority sent with prefetch requests to Dragonfly mirrors (0-6)')
}

export function globals(cmd: Command): GlobalCliOptions {
  return cmd.optsWithGlobals() as GlobalCliOptions
}
