import { readFile } from 'node:fs/promises'
import t from 'tap'
import { generateOpenapi, OPENAPI_PATH } from '../../scripts/openapi.ts'

t.test('openapi/openapi.json is in sync with the route schemas', async t => {
  const generated = await generateOpenapi()
  const onDisk = await readFile(OPENAPI_PATH, 'utf8')
  t.ok(generated === onDisk, 'run `npm run openapi` to regenerate openapi/openapi.json')
  t.ok(generated.endsWith('}\n'), 'trailing newline')
})

t.test('every operation has tags, a success response and problem responses', async t => {
  const doc = JSON.parse(await generateOpenapi())
  let n = 0
  for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, { tags?: string[], responses: Record<string, { content?: Record<string, unknown> }>, security?: unknown }>>)) {
    for (const [method, op] of Object.entries(ops)) {
      n++
      const name = `${method.toUpperCase()} ${path}`
      t.ok(op.tags !== undefined && op.tags.length > 0, `${name} has tags`)
      const codes = Object.keys(op.responses)
      t.ok(codes.some(c => c.startsWith('2')), `${name} declares its success`)
      for (const c of codes.filter(c => Number(c) >= 400)) {
        t.ok(op.responses[c].content?.['application/problem+json'] !== undefined, `${name} ${c} is problem+json`)
      }
      if (path.startsWith('/v1/admin/')) t.same(op.security, [{ adminToken: [] }], `${name} security`)
      else if (path.startsWith('/v1/')) t.same(op.security, [{ tenantToken: [] }], `${name} security`)
    }
  }
  t.ok(n >= 20, `${n} operations`)
})
