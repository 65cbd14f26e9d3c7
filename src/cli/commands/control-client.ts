import { request, Agent } from 'undici'
import type { MountStatus } from '../../daemon/control.js'
import { CnaifsError } from '../../util/errors.js'

/** Talks to a running daemon through its control socket. */
export class ControlClient {
  private readonly agent: Agent
  constructor(readonly socketPath: string) {
    this.agent = new Agent({ connect: { socketPath } })
  }

  async status(): Promise<MountStatus> {
    const res = await request('http://cnaifs/status', { dispatcher: this.agent })
    if (res.statusCode !== 200) throw new CnaifsError('EDAEMON', `daemon answered HTTP ${res.statusCode}`)
    return (await res.body.json()) as MountStatus
  }

  async prefetch(paths: string[], onProgress: (done: number, total: number) => void): Promise<void> {
    const res = await request('http://cnaifs/prefetch', { dispatcher: this.agent, method: 'POST', body: JSON.stringify({ paths }), bodyTimeout: 0 })
    let buffered = ''
    for await (const chunk of res.body) {
      buffered += chunk.toString()
      let nl: number
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = JSON.parse(buffered.slice(0, nl)) as { done?: number; total?: number; finished?: boolean; error?: string }
        buffered = buffered.slice(nl + 1)
        if (line.error) throw new CnaifsError('EPREFETCH', line.error)
        if (line.done !== undefined && line.total !== undefined) onProgress(line.done, line.total)
      }
    }
  }

  async close(): Promise<void> {
    await this.agent.close()
  }
}
