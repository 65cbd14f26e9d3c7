import type { TreeNode } from '../index/tree.js'

const TYPE_CHAR = { directory: 'd', file: '-', symlink: 'l' } as const

export function modeString(node: TreeNode): string {
  const bits = node.mode
  const rwx = (shift: number) =>
    ((bits >> shift) & 4 ? 'r' : '-') + ((bits >> shift) & 2 ? 'w' : '-') + ((bits >> shift) & 1 ? 'x' : '-')
  return TYPE_CHAR[node.kind] + rwx(6) + rwx(3) + rwx(0)
}

export function nodeSize(node: TreeNode): number {
  if (node.kind === 'file') return node.size
  if (node.kind === 'symlink') return Buffer.byteLength(node.target)
  return 4096
}

/** One `ls -l` style line. */
export function longLine(node: TreeNode, name: string): string {
  const nlink = node.kind === 'file' ? node.nlink : node.kind === 'directory' ? 2 : 1
  const when = new Date(node.mtimeMs).toISOString().replace('T', ' ').slice(0, 19)
  const suffix = node.kind === 'symlink' ? ` -> ${node.target}` : ''
  return `${modeString(node)} ${String(nlink).padStart(2)} ${String(node.uid).padStart(5)} ${String(node.gid).padStart(5)} ${String(nodeSize(node)).padStart(14)} ${when} ${name}${suffix}`
}

/** Renders rows as aligned columns (first row is the header). */
export function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)))
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ')).join('\n')
}
