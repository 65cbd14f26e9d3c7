import { execFile } from 'node:child_process'
import { closeSync, writeSync } from 'node:fs'

/**
 * Readiness and status reporting of the daemon, to whoever started it:
 * - `cnaifs mount` (without --foreground) passes a pipe as fd 3 (CNAIFS_READY_FD) and waits for one JSON line;
 * - systemd (Type=notify) passes NOTIFY_SOCKET. Node has no unix datagram sockets, so messages go through
 *   `systemd-notify`, which needs NotifyAccess=all in the unit (it sends from its own pid).
 */
export class DaemonNotifier {
  private readyFd?: number
  private notifyChain: Promise<void> = Promise.resolve()

  constructor(env: NodeJS.ProcessEnv = process.env) {
    const fd = env.CNAIFS_READY_FD ? Number(env.CNAIFS_READY_FD) : undefined
    this.readyFd = fd !== undefined && Number.isInteger(fd) ? fd : undefined
  }

  /**
   * One line, written synchronously: a failing daemon exits right after failed(), before an asynchronous write
   * would have reached the parent (which then could only guess the error, and its exit code, from the log).
   */
  private sendPipe(message: object): void {
    if (this.readyFd === undefined) return
    try {
      writeSync(this.readyFd, JSON.stringify(message) + '\n')
    } catch {
      // the parent went away: nothing to tell
    }
  }

  private closePipe(): void {
    if (this.readyFd === undefined) return
    try {
      closeSync(this.readyFd)
    } catch {
      // already closed
    }
    this.readyFd = undefined
  }

  private sd(...assignments: string[]): Promise<void> {
    if (!process.env.NOTIFY_SOCKET) return Promise.resolve()
    // Sequenced so STATUS lines arrive in order; failures are not fatal (systemd may be absent).
    this.notifyChain = this.notifyChain.then(() => new Promise<void>((resolve) => {
      execFile('systemd-notify', [`--pid=${process.pid}`, ...assignments], () => resolve())
    }))
    return this.notifyChain
  }

  status(text: string): Promise<void> {
    return this.sd(`STATUS=${text}`)
  }

  async ready(info: object): Promise<void> {
    this.sendPipe({ ready: true, ...info })
    this.closePipe()
    await this.sd('--ready', 'STATUS=mounted')
  }

  /** `code` is the CnaifsError code, so `cnaifs mount` can exit as the foreground command would (README exit codes). */
  failed(message: string, code?: string): void {
    this.sendPipe({ error: message, ...(code ? { code } : {}) })
    this.closePipe()
  }

  stopping(): Promise<void> {
    return this.sd('STOPPING=1', 'STATUS=unmounting')
  }
}
