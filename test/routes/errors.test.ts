import { readFile } from 'node:fs/promises'
import { Writable } from 'node:stream'
import pino from 'pino'
import t from 'tap'
import { buildApp } from '../../src/app.ts'
import { loadConfig } from '../../src/config.ts'
import { CATALOGUE, Errors, fromErrno, fieldOf } from '../../src/errors.ts'
import { err } from '../../src/hw/errno.ts'
import { ADMIN_TOKEN, build, createTenant, problem, tempStateDir } from '../helper.ts'

t.test('unknown routes answer 404 in the problem shape', async t => {
  const app = await build(t)
  const res = await app.inject({ method: 'GET', url: '/v2/nothing?x=1' })
  t.equal(res.statusCode, 404)
  t.same(problem(res), {
    type: 'urn:warpdrive:error:WD_ERR_NOT_FOUND',
    title: 'Not found',
    status: 404,
    code: 'WD_ERR_NOT_FOUND',
    detail: 'no route GET /v2/nothing',
    instance: '/v2/nothing?x=1',
    requestId: res.headers['x-request-id']
  })
  const method = await app.inject({ method: 'PUT', url: '/healthz' })
  t.equal(problem(method).status, 404)
})

t.test('request ids: generated, or taken from x-request-id', async t => {
  const app = await build(t)
  const gen = await app.inject({ method: 'GET', url: '/healthz' })
  t.match(gen.headers['x-request-id'], /^[0-9a-f-]{36}$/)
  const given = await app.inject({ method: 'GET', url: '/nope', headers: { 'x-request-id': 'trace-42' } })
  t.equal(given.headers['x-request-id'], 'trace-42')
  t.equal(problem(given).requestId, 'trace-42')
})

t.test('unreadable bodies answer 400 WD_ERR_BAD_REQUEST', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const res = await app.inject({ method: 'POST', url: '/v1/files', headers: { ...a.headers, 'content-type': 'application/json' }, payload: '{"size":' })
  t.equal(res.statusCode, 400)
  t.equal(problem(res).code, 'WD_ERR_BAD_REQUEST')
})

t.test('a 5xx logs its message and never answers it', async t => {
  const lines: string[] = []
  const sink = new Writable({
    write (chunk, _enc, cb) {
      lines.push(String(chunk))
      cb()
    }
  })
  const config = loadConfig({ WARPD_STATE_DIR: tempStateDir(t), WARPD_ADMIN_TOKEN: ADMIN_TOKEN, WARPD_PHYS_MEM_BYTES: 1 << 20 })
  const app = await buildApp({ config, logger: pino({ level: 'info' }, sink) })
  t.teardown(async () => await app.close())
  app.get('/boom', async () => { throw new Error('secret internals at /etc/shadow') })
  app.get('/nomem', async () => { throw fromErrno(err('ENOMEM', 'frame 12 of 256 in zone dma')) })
  const res = await app.inject({ method: 'GET', url: '/boom' })
  t.equal(res.statusCode, 500)
  const p = problem(res)
  t.match(p, { code: 'WD_ERR_INTERNAL', status: 500 })
  t.notMatch(res.body, /secret|shadow/)
  t.ok(lines.some(l => l.includes('secret internals') && l.includes(p.requestId as string)), 'logged under the request id')

  const nomem = await app.inject({ method: 'GET', url: '/nomem' })
  t.equal(nomem.statusCode, 507)
  t.match(problem(nomem), { code: 'ENOMEM', detail: /^Not enough memory/ })
  t.notMatch(nomem.body, /zone dma/)
  t.notOk(lines.some(l => /Bearer|test-admin-token/.test(l)), 'no token in the logs')
})

t.test('fromErrno keeps the errno, status, address and progress', async t => {
  const e = fromErrno(err('EFAULT', 'write to 0x1000 not permitted', { addr: 0x1000, done: 12 }))
  t.equal(e.code, 'EFAULT')
  t.equal(e.statusCode, 422)
  t.equal(e.addr, 0x1000)
  t.equal(e.done, 12)
  t.equal(e.message, 'write to 0x1000 not permitted')
  t.equal(fromErrno(err('EBUSY', 'no free queue')).statusCode, 409)
  t.equal(new Errors.Quota('x').statusCode, 409)
})

t.test('fieldOf names nested, missing and extra fields', async t => {
  t.equal(fieldOf({ instancePath: '/quotas/memoryBytes', params: {} }, 'body'), 'quotas.memoryBytes')
  t.equal(fieldOf({ instancePath: '', params: { missingProperty: 'name' } }, 'body'), 'name')
  t.equal(fieldOf({ instancePath: '/quotas', params: { additionalProperty: 'cpus' } }, 'body'), 'quotas.cpus')
  t.equal(fieldOf({ instancePath: '', params: { type: 'object' } }, 'body'), 'body')
  t.equal(fieldOf({ instancePath: '/a~1b', params: {} }, 'body'), 'a/b')
})

t.test('docs/errors.md lists every code with its status', async t => {
  const doc = await readFile(new URL('../../docs/errors.md', import.meta.url), 'utf8')
  const rows = new Map<string, number>()
  for (const m of doc.matchAll(/^\| `([A-Z_]+)` \| (\d{3}) \|/gm)) rows.set(m[1], Number(m[2]))
  for (const [code, entry] of Object.entries(CATALOGUE)) t.equal(rows.get(code), entry.status, code)
  t.equal(rows.size, Object.keys(CATALOGUE).length, 'and nothing else')
})

t.test('JSON routes: 413 over the body limit, 415 for another content type', async t => {
  const app = await build(t, { WARPD_MAX_BODY_BYTES: 1024 })
  const a = await createTenant(app)
  const big = await app.inject({ method: 'POST', url: '/v1/files', headers: a.headers, payload: { size: 1, pad: 'x'.repeat(2000) } })
  t.equal(big.statusCode, 413)
  t.match(problem(big), { code: 'WD_ERR_PAYLOAD_TOO_LARGE', status: 413 })
  const text = await app.inject({ method: 'POST', url: '/v1/files', headers: { ...a.headers, 'content-type': 'text/plain' }, payload: 'size=1' })
  t.equal(text.statusCode, 415)
  t.equal(problem(text).code, 'WD_ERR_UNSUPPORTED_MEDIA_TYPE')
})
