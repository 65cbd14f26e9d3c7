import type { Command } from 'commander'
import type { GlobalCliOptions } from './context.js'

/** Registry options shared by every command that talks to a registry. */
export function addRegistryOptions(cmd: Command): Command {
  return cmd
    .option('--plain-http', 'use HTTP instead of HTTPS (default for localhost/127.0.0.1 only)')
    .option('--insecure', 'skip TLS certificate verification')
    .option('--ca-file <path>', 'PEM file of a private CA to trust')
    .option('--username <name>', 'registry user name (the password is read from stdin with --password-stdin)')
    .option('--password-stdin', 'read the registry password from stdin')
    .option('--request-timeout <seconds>', 'time allowed for each registry request', '30')
}

export function globals(cmd: Command): GlobalCliOptions {
  return cmd.optsWithGlobals() as GlobalCliOptions
}

