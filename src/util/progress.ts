/**
 * A progress bar on stderr for long work (push, prefetch). On a terminal it redraws one line; otherwise it
 * prints a line at most every 5 s so logs of unattended runs stay short.
 */
export class ProgressBar {
  private lastDraw = 0
  private readonly tty: boolean
  private readonly started = Date.now()

  constructor(private readonly label: string, private readonly stream: NodeJS.WriteStream = process.stderr, private readonly enabled = true) {
    this.tty = Boolean(stream.isTTY)
  }

  update(done: number, total: number): void {
    if (!this.enabled) return
    const now = Date.now()
    const finished = done >= total
    if (!finished && now - this.lastDraw < (this.tty ? 100 : 5000)) return
    this.lastDraw = now
    const pct = total > 0 ? Math.min(100, (done / total) * 100) : 100
    const seconds = Math.max(0.001, (now - this.started) / 1000)
    const rate = formatBytes(done / seconds) + '/s'
    const width = 30
    const filled = Math.round((pct / 100) * width)
    const bar = '#'.repeat(filled) + '-'.repeat(width - filled)
    const line = `${this.label} [${bar}] ${pct.toFixed(1).padStart(5)}% ${formatBytes(done)}/${formatBytes(total)} ${rate}`
    if (this.tty) this.stream.write(`\r${line}${finished ? '\n' : ''}`)
    else this.stream.write(line + '\n')
  }
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = 0
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`
}

/** A size as a command-line value parseSize() reads back exactly: the largest unit that divides it (`512K`, `256M`). */
export function formatSizeArg(n: number): string {
  for (const [unit, mult] of [['T', 1024 ** 4], ['G', 1024 ** 3], ['M', 1024 ** 2], ['K', 1024]] as const) {
    if (n >= mult && n % mult === 0) return `${n / mult}${unit}`
  }
  return String(n)
}

/** Parses sizes such as `10G`, `512MiB`, `1.5g`, `1048576`. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$/i.exec(text)
  if (!m) throw new Error(`invalid size ${JSON.stringify(text)} (examples: 512M, 10G, 1073741824)`)
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't']
  return Math.floor(Number(m[1]) * mult)
}
