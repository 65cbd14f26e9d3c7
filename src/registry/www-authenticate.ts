/** One challenge of a `WWW-Authenticate` header, e.g. `Bearer realm="…",service="…",scope="…"`. */
export interface AuthChallenge {
  scheme: string // lower-cased: 'bearer' | 'basic' | …
  params: Record<string, string>
}

/**
 * Parses a WWW-Authenticate header value (RFC 7235). Registries send one challenge, but the grammar allows a
 * list, and parameter values may be quoted strings containing commas (scopes do: `pull,push`).
 */
export function parseWwwAuthenticate(header: string): AuthChallenge[] {
  const challenges: AuthChallenge[] = []
  let i = 0
  const s = header
  const skipSpace = () => { while (i < s.length && (s[i] === ' ' || s[i] === '\t' || s[i] === ',')) i++ }
  const readToken = () => {
    const start = i
    while (i < s.length && /[!#$%&'*+\-.^_`|~0-9A-Za-z]/.test(s[i])) i++
    return s.slice(start, i)
  }
  while (i < s.length) {
    skipSpace()
    const scheme = readToken()
    if (!scheme) break
    const challenge: AuthChallenge = { scheme: scheme.toLowerCase(), params: {} }
    challenges.push(challenge)
    for (;;) {
      while (i < s.length && (s[i] === ' ' || s[i] === '\t')) i++
      const save = i
      const key = readToken()
      while (i < s.length && (s[i] === ' ' || s[i] === '\t')) i++
      if (!key || s[i] !== '=') { i = save; break }
      i++ // '='
      while (i < s.length && (s[i] === ' ' || s[i] === '\t')) i++
      let value = ''
      if (s[i] === '"') {
        i++
        while (i < s.length && s[i] !== '"') {
          if (s[i] === '\\' && i + 1 < s.length) i++
          value += s[i++]
        }
        i++ // closing quote
      } else {
        value = readToken()
      }
      challenge.params[key.toLowerCase()] = value
      while (i < s.length && (s[i] === ' ' || s[i] === '\t')) i++
      if (s[i] === ',') { i++; continue }
      break
    }
  }
  return challenges
}
