/**
 * Finds the daemon of a mount point for `status`, `unmount` and `prefetch MP`: first in the runtime registry
 * (no --cache-dir needed), then at the control socket of the cache dir given or defaulted (daemons started
 * before the runtime registry existed).
 */
import { existsSync } from 'node:fs'
import { resolve } from 'node:path'
import { controlSocketPath } from '../../daemon/control.js'
import { findDaemon, processStartTime, type RuntimeEntry } from '../../daemon/runtime-registry.js'
import { ControlClient } from './control-client.js'

export interface LocatedDaemon {
  control: ControlClient
  /** From the runtime registry; absent for a daemon found only by its cache dir's socket. */
  entry?: RuntimeEntry
}

export async function locateDaemon(mountpoint: string, cacheDir: string): Promise<LocatedDaemon | undefined> {
  const abs = resolve(mountpoint)
  const entry = await findDaemon(abs)
  if (entry) return { control: new ControlClient(entry.controlSocket), entry }
  const socket = controlSocketPath(cacheDir, abs)
  return existsSync(socket) ? { control: new ControlClient(socket) } : undefined
}

/** The daemon's pid and start time: from its registry entry, or by asking it. */
export async function daemonProcess(d: LocatedDaemon): Promise<{ pid: number; startTime: number } | undefined> {
  if (d.entry) return { pid: d.entry.pid, startTime: d.entry.pidStartTime }
  const pid = await d.control.status().then((s) => s.pid, () => undefined)
  const startTime = pid ? processStartTime(pid) : undefined
  return pid && startTime !== undefined ? { pid, startTime } : undefined
}
