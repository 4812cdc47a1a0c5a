/**
 * Runs the README's "A walk-through with curl" block through inject(): a small shell
 * reads the block the way bash would (quotes, $VAR, ${VAR}, ${#VAR}, $(...), pipes,
 * `;`, line continuations, a heredoc) and runs the few commands it uses (curl, jq, cat,
 * echo, printf, od, tr, sha256sum, node -e). If the README changes, this test runs the
 * new lines; a command it does not know fails the test rather than being skipped.
 */
import crypto from 'node:crypto'
import { readFile } from 'node:fs/promises'
import zlib from 'node:zlib'
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { ADMIN_TOKEN, build } from '../helper.ts'

const ORIGIN = 'http://127.0.0.1:8080'

interface Shell {
  app: FastifyInstance
  env: Map<string, string>
  files: Map<string, Buffer>
  /** every request the block made, for the assertions */
  requests: Array<{ method: string, url: string, status: number }>
}

interface Statement {
  text: string
  heredoc?: string
}

/** The README section's sh block, as statements (continuations joined, heredocs attached). */
function walkthroughStatements (readme: string): Statement[] {
  const start = readme.indexOf('## A walk-through with curl')
  if (start < 0) throw new Error('README has no "## A walk-through with curl" section')
  const open = readme.indexOf('```sh\n', start)
  const close = readme.indexOf('\n```', open + 6)
  const lines = readme.slice(open + 6, close).split('\n')
  const out: Statement[] = []
  for (let i = 0; i < lines.length; i++) {
    let text = lines[i]
    while (text.endsWith('\\')) text = text.slice(0, -1) + lines[++i].replace(/^\s+/, ' ')
    if (text.trim() === '' || text.trimStart().startsWith('#')) continue
    const here = /<<\s*(['"]?)(\w+)\1/.exec(text)
    if (here !== null) {
      const body: string[] = []
      while (lines[++i] !== here[2]) {
        if (i >= lines.length) throw new Error(`heredoc ${here[2]} is not closed`)
        body.push(lines[i])
      }
      // A quoted delimiter keeps the body literal; a bare one expands it.
      out.push({ text: text.replace(here[0], here[1] === '' ? '<<EXPAND' : '<<LITERAL'), heredoc: body.join('\n') + '\n' })
    } else {
      out.push({ text })
    }
  }
  return out
}

/** Expands $VAR, ${VAR} and ${#VAR} in `s`. */
function expandVars (s: string, env: Map<string, string>): string {
  return s.replace(/\$\{#(\w+)\}|\$\{(\w+)\}|\$(\w+)/g, (_m, len?: string, braced?: string, bare?: string) => {
    if (len !== undefined) return String(Buffer.byteLength(env.get(len) ?? ''))
    return env.get(braced ?? bare ?? '') ?? ''
  })
}

type Token = { word: string } | { op: '|' | ';' | '>' | '<<EXPAND' | '<<LITERAL' } | { subst: string }

/** Splits a statement into words and operators, with bash's quoting rules (the subset used). */
function tokenize (s: string, env: Map<string, string>): Token[] {
  const out: Token[] = []
  let i = 0
  while (i < s.length) {
    const c = s[i]
    if (c === ' ' || c === '\t') { i++; continue }
    if (s.startsWith('<<EXPAND', i) || s.startsWith('<<LITERAL', i)) {
      const op = s.startsWith('<<EXPAND', i) ? '<<EXPAND' : '<<LITERAL'
      out.push({ op })
      i += op.length
      continue
    }
    if (c === '|' || c === ';' || c === '>') { out.push({ op: c }); i++; continue }
    if (s.startsWith('$(', i)) {
      let depth = 0
      let j = i + 1
      let quote = ''
      for (; j < s.length; j++) {
        const d = s[j]
        if (quote !== '') { if (d === quote) quote = ''; else if (d === '\\' && quote === '"') j++; continue }
        if (d === '\'' || d === '"') quote = d
        else if (d === '(') depth++
        else if (d === ')' && --depth === 0) break
      }
      out.push({ subst: s.slice(i + 2, j) })
      i = j + 1
      continue
    }
    let word = ''
    while (i < s.length && !' \t|;>'.includes(s[i])) {
      const d = s[i]
      if (d === '\'') {
        const end = s.indexOf('\'', i + 1)
        word += s.slice(i + 1, end)
        i = end + 1
      } else if (d === '"') {
        let j = i + 1
        let raw = ''
        for (; s[j] !== '"'; j++) {
          if (s[j] === '\\' && '"\\$`'.includes(s[j + 1])) raw += s[++j] === '$' ? '\u0000' : s[j]
          else raw += s[j]
        }
        word += expandVars(raw, env).replaceAll('\u0000', '$')
        i = j + 1
      } else if (d === '\\') {
        word += s[i + 1]
        i += 2
      } else {
        let j = i
        while (j < s.length && !' \t|;>\'"\\'.includes(s[j])) j++
        word += expandVars(s.slice(i, j), env)
        i = j
      }
    }
    out.push({ word })
  }
  return out
}

function jq (args: string[], input: Buffer): Buffer {
  let raw = false
  let filter = '.'
  for (const a of args) {
    if (a === '-r') raw = true
    else if (a.startsWith('-')) throw new Error(`jq: option ${a} not emulated`)
    else filter = a
  }
  let v: unknown = JSON.parse(input.toString())
  const path = filter === '.' ? [] : filter.slice(1).split(/\.|(?=\[)/).filter(p => p !== '')
  for (const p of path) {
    const index = /^\[(\d+)\]$/.exec(p)
    if (index !== null) v = (v as unknown[])[Number(index[1])]
    else if (/^\w+$/.test(p)) v = (v as Record<string, unknown>)[p]
    else throw new Error(`jq: filter ${filter} not emulated`)
  }
  const text = raw && typeof v === 'string' ? v : JSON.stringify(v, null, 2)
  return Buffer.from(text + '\n')
}

async function curl (sh: Shell, args: string[]): Promise<{ stdout: Buffer, file?: [string, Buffer] }> {
  let method: string | undefined
  let url: string | undefined
  let body: Buffer | undefined
  let form = false
  let output: string | undefined
  const headers: Record<string, string> = {}
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (a === '-s') continue
    if (a === '-X') method = args[++i]
    else if (a === '-H') {
      const h = args[++i]
      const colon = h.indexOf(':')
      headers[h.slice(0, colon).trim().toLowerCase()] = h.slice(colon + 1).trim()
    } else if (a === '-d' || a === '--data-binary') {
      const v = args[++i]
      const file = v.startsWith('@') ? sh.files.get(v.slice(1)) : undefined
      if (v.startsWith('@') && file === undefined) throw new Error(`curl: no file ${v.slice(1)}`)
      // -d @file drops newlines, as curl does; --data-binary sends the bytes as they are.
      body = file === undefined ? Buffer.from(v) : a === '-d' ? Buffer.from(file.toString().replace(/[\r\n]/g, '')) : file
      form = a === '-d'
    } else if (a === '-o') output = args[++i]
    else if (a.startsWith('-')) throw new Error(`curl: option ${a} not emulated`)
    else url = a
  }
  if (url === undefined || !url.startsWith(ORIGIN + '/')) throw new Error(`curl: the URL must start with ${ORIGIN}/: ${String(url)}`)
  // curl's own default for -d: a form, which the API would refuse with 415.
  if (body !== undefined && form && headers['content-type'] === undefined) headers['content-type'] = 'application/x-www-form-urlencoded'
  const m = (method ?? (body === undefined ? 'GET' : 'POST')) as 'GET' | 'POST' | 'PUT' | 'DELETE'
  const res = await sh.app.inject({ method: m, url: url.slice(ORIGIN.length), headers, payload: body })
  sh.requests.push({ method: m, url: url.slice(ORIGIN.length), status: res.statusCode })
  return output === undefined ? { stdout: res.rawPayload } : { stdout: Buffer.alloc(0), file: [output, res.rawPayload] }
}

/** One command of a pipeline. */
async function command (sh: Shell, argv: string[], stdin: Buffer): Promise<Buffer> {
  const [name, ...args] = argv
  switch (name) {
    case 'curl': {
      const r = await curl(sh, args)
      if (r.file !== undefined) sh.files.set(r.file[0], r.file[1])
      return r.stdout
    }
    case 'jq': return jq(args, stdin)
    case 'cat': {
      if (args.length === 0) return stdin
      const f = sh.files.get(args[0])
      if (f === undefined) throw new Error(`cat: no file ${args[0]}`)
      return f
    }
    case 'echo': return Buffer.from(args.join(' ') + '\n')
    case 'printf': {
      if (args[0] !== '%s') throw new Error(`printf: format ${args[0]} not emulated`)
      return Buffer.from(args.slice(1).join(''))
    }
    case 'od': {
      if (args.join(' ') !== '-An -tx1') throw new Error(`od ${args.join(' ')} not emulated`)
      const lines: string[] = []
      for (let i = 0; i < stdin.length; i += 16) lines.push([...stdin.subarray(i, i + 16)].map(b => ' ' + b.toString(16).padStart(2, '0')).join(''))
      return Buffer.from(lines.map(l => l + '\n').join(''))
    }
    case 'tr': {
      if (args[0] !== '-d') throw new Error(`tr ${args[0]} not emulated`)
      const drop = new Set(args[1].replaceAll('\\n', '\n').replaceAll('\\t', '\t'))
      return Buffer.from([...stdin.toString()].filter(c => !drop.has(c)).join(''))
    }
    case 'sha256sum': return Buffer.from(`${crypto.createHash('sha256').update(stdin).digest('hex')}  -\n`)
    case 'node': {
      if (args[0] !== '-e') throw new Error('node: only -e is emulated')
      const chunks: Buffer[] = []
      const proc = { stdout: { write: (x: string | Uint8Array) => { chunks.push(Buffer.from(x)) } } }
      const fs = {
        readFileSync: (p: string) => {
          const f = sh.files.get(p)
          if (f === undefined) throw new Error(`node: no file ${p}`)
          return f
        }
      }
      // eslint-disable-next-line no-new-func -- the README's own script, with node -e's globals
      new Function('process', 'zlib', 'fs', 'Buffer', args[1])(proc, zlib, fs, Buffer)
      return Buffer.concat(chunks)
    }
    default: throw new Error(`${name}: command not emulated`)
  }
}

/** Runs a statement; answers what it printed. */
async function run (sh: Shell, st: Statement): Promise<Buffer> {
  const assign = /^(\w+)=(.*)$/s.exec(st.text)
  if (assign !== null) {
    const [, name, rhs] = assign
    const toks = tokenize(rhs, sh.env)
    let value: string
    if (toks.length === 1 && 'subst' in toks[0]) value = (await pipelines(sh, { text: toks[0].subst })).toString().replace(/\n+$/, '')
    else if (toks.length === 1 && 'word' in toks[0]) value = toks[0].word
    else throw new Error(`assignment not emulated: ${st.text}`)
    sh.env.set(name, value)
    return Buffer.alloc(0)
  }
  return await pipelines(sh, st)
}

async function pipelines (sh: Shell, st: Statement): Promise<Buffer> {
  const toks = tokenize(st.text, sh.env)
  const out: Buffer[] = []
  let stdin: Buffer = Buffer.alloc(0)
  let argv: string[] = []
  let redirect: string | undefined
  let heredoc: Buffer | undefined
  const flush = async (pipe: boolean): Promise<void> => {
    if (argv.length === 0) return
    const input = heredoc ?? stdin
    const result = await command(sh, argv, input)
    argv = []
    heredoc = undefined
    if (redirect !== undefined) {
      sh.files.set(redirect, result)
      redirect = undefined
      stdin = Buffer.alloc(0)
    } else if (pipe) {
      stdin = result
    } else {
      out.push(result)
      stdin = Buffer.alloc(0)
    }
  }
  for (let i = 0; i < toks.length; i++) {
    const tok = toks[i]
    if ('op' in tok) {
      if (tok.op === '|') await flush(true)
      else if (tok.op === ';') await flush(false)
      else if (tok.op === '>') {
        const next = toks[++i]
        if (next === undefined || !('word' in next)) throw new Error(`> needs a file: ${st.text}`)
        redirect = next.word
      } else {
        if (st.heredoc === undefined) throw new Error(`a heredoc without a body: ${st.text}`)
        heredoc = Buffer.from(tok.op === '<<EXPAND' ? expandVars(st.heredoc, sh.env) : st.heredoc)
      }
    } else if ('word' in tok) {
      argv.push(tok.word)
    } else {
      throw new Error(`command substitution inside a command not emulated: ${st.text}`)
    }
  }
  await flush(false)
  return Buffer.concat(out)
}

t.test('the README walk-through, line by line, through inject()', async t => {
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8')
  const statements = walkthroughStatements(readme)
  t.ok(statements.length >= 10, `${statements.length} statements`)
  const app = await build(t)
  const sh: Shell = { app, env: new Map(), files: new Map([['state/admin-token', Buffer.from(ADMIN_TOKEN + '\n')]]), requests: [] }
  const outputs: Array<[string, string]> = []
  for (const st of statements) outputs.push([st.text, (await run(sh, st)).toString()])

  t.ok(sh.requests.length >= 8, `${sh.requests.length} requests`)
  for (const r of sh.requests) t.ok(r.status < 400, `${r.method} ${r.url} answered ${r.status}`)
  const data = sh.env.get('DATA') ?? ''
  t.ok(data.length > 0, 'the block stores some data')

  // The queue is a sync_only queue on wd1, the device without SVA.
  const qid = sh.env.get('QID') ?? ''
  t.match(app.uacce.queues.get(qid), { kind: 'sync_only' }, `${qid} is sync_only`)
  t.equal(app.uacce.queues.get(qid)?.device.dev.id, 'wd1')

  // Every completion succeeded, in order.
  const results = JSON.parse(sh.env.get('RESULTS') ?? '[]') as Array<{ status: string, tag: string }>
  t.same(results.map(r => [r.status, r.tag]), [['SUCCESS', '0x1'], ['SUCCESS', '0x2']])

  // The digest the device wrote equals sha256sum's, and node:crypto's.
  const sumAt = outputs.findIndex(([text]) => /\|\s*sha256sum$/.test(text))
  t.ok(sumAt > 0, 'a sha256sum line')
  const want = crypto.createHash('sha256').update(data).digest('hex')
  t.equal(outputs[sumAt][1], `${want}  -\n`, 'sha256sum of the data')
  t.equal(outputs[sumAt - 1][1], `${want}\n`, 'the digest the device wrote, read back')

  // The DEFLATE output inflates back to the data, in the test and in the README's node -e.
  const deflated = [...sh.files.values()].find(f => { try { return zlib.inflateRawSync(f).toString() === data } catch { return false } })
  t.ok(deflated !== undefined, 'the compressed bytes read back inflate to the data')
  const inflated = outputs.find(([text]) => text.startsWith('node -e'))
  t.equal(inflated?.[1], data + '\n', 'node -e prints the data')
})

t.test('the walk-through shell reads bash the way bash does', async t => {
  const env = new Map([['A', 'x y'], ['N', '5']])
  t.same(tokenize('echo "$A" \'$A\' $N\\ z "{\\"pid\\":$N}" $' + '{#A}', env), [
    { word: 'echo' }, { word: 'x y' }, { word: '$A' }, { word: '5 z' }, { word: '{"pid":5}' }, { word: '3' }
  ])
  t.same(tokenize('a | b; c > f', env), [{ word: 'a' }, { op: '|' }, { word: 'b' }, { op: ';' }, { word: 'c' }, { op: '>' }, { word: 'f' }])
  t.same(tokenize('$(curl -s "x(y)" | jq .a)', env), [{ subst: 'curl -s "x(y)" | jq .a' }])
  const st = walkthroughStatements('## A walk-through with curl\n```sh\n# c\nX=1 \\\n  2\ncat > f <<EOF\n$X\nEOF\n```\n')
  t.same(st, [{ text: 'X=1  2' }, { text: 'cat > f <<EXPAND', heredoc: '$X\n' }])
  t.same(jq(['-r', '.[1].value'], Buffer.from('[{},{"value":49}]')).toString(), '49\n')
})
