import t from 'tap'
import { build, createProcess, createTenant, mmap, problem } from '../helper.ts'

const OCTET = 'application/octet-stream'

t.test('store and load, across a page boundary', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const addr = await mmap(app, a, pid, { length: 2 * 4096, prot: 'rw' })
  const at = `0x${(Number(addr) + 4090).toString(16)}`
  const data = Buffer.from(Array.from({ length: 300 }, (_, i) => i & 0xff))
  const put = await app.inject({ method: 'PUT', url: `/v1/processes/${pid}/memory/${at}`, headers: { ...a.headers, 'content-type': OCTET }, payload: data })
  t.equal(put.statusCode, 200)
  t.same(put.json(), { addr: at, written: 300 })

  const get = await app.inject({ method: 'GET', url: `/v1/processes/${pid}/memory/${at}?length=300`, headers: a.headers })
  t.equal(get.statusCode, 200)
  t.match(get.headers['content-type'], /^application\/octet-stream/)
  t.same(get.rawPayload, data)

  const zero = await app.inject({ method: 'GET', url: `/v1/processes/${pid}/memory/${addr}?length=4`, headers: a.headers })
  t.same(zero.rawPayload, Buffer.alloc(4), 'fresh anonymous memory reads as zeros')
  const empty = await app.inject({ method: 'GET', url: `/v1/processes/${pid}/memory/${addr}?length=0`, headers: a.headers })
  t.equal(empty.rawPayload.length, 0)
  const noBody = await app.inject({ method: 'PUT', url: `/v1/processes/${pid}/memory/${addr}`, headers: a.headers })
  t.same(noBody.json(), { addr, written: 0 })
})

t.test('EFAULT carries the faulting address and the bytes done', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const addr = await mmap(app, a, pid, { length: 4096, prot: 'r' })
  const store = await app.inject({ method: 'PUT', url: `/v1/processes/${pid}/memory/${addr}`, headers: { ...a.headers, 'content-type': OCTET }, payload: Buffer.from('nope') })
  t.equal(store.statusCode, 422)
  t.match(problem(store), { code: 'EFAULT', status: 422, title: 'Bad address', addr, done: 0, type: 'urn:warpdrive:error:EFAULT' })

  const rw = await mmap(app, a, pid, { length: 4096, prot: 'rw' })
  // The rw page sits just below the read-only one: a store running off its end.
  t.equal(Number(rw) + 4096, Number(addr))
  const at = `0x${(Number(rw) + 4094).toString(16)}`
  const partial = await app.inject({ method: 'PUT', url: `/v1/processes/${pid}/memory/${at}`, headers: { ...a.headers, 'content-type': OCTET }, payload: Buffer.from('abcdef') })
  t.match(problem(partial), { code: 'EFAULT', addr, done: 2 })

  const load = await app.inject({ method: 'GET', url: `/v1/processes/${pid}/memory/0x10000?length=1`, headers: a.headers })
  t.equal(load.statusCode, 422)
  t.match(problem(load), { code: 'EFAULT', addr: '0x10000', done: 0 })
})

t.test('limits: 413 over the body limit, 400 for a longer load, 415 for JSON', async t => {
  const app = await build(t, { WARPD_MAX_BODY_BYTES: 4096 })
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const addr = await mmap(app, a, pid, { length: 4 * 4096, prot: 'rw' })
  const big = await app.inject({ method: 'PUT', url: `/v1/processes/${pid}/memory/${addr}`, headers: { ...a.headers, 'content-type': OCTET }, payload: Buffer.alloc(4097) })
  t.equal(big.statusCode, 413)
  t.match(problem(big), { code: 'WD_ERR_PAYLOAD_TOO_LARGE', status: 413 })
  const fits = await app.inject({ method: 'PUT', url: `/v1/processes/${pid}/memory/${addr}`, headers: { ...a.headers, 'content-type': OCTET }, payload: Buffer.alloc(4096) })
  t.equal(fits.statusCode, 200)

  const long = await app.inject({ method: 'GET', url: `/v1/processes/${pid}/memory/${addr}?length=4097`, headers: a.headers })
  t.equal(long.statusCode, 400)
  t.match(problem(long), { code: 'WD_ERR_VALIDATION', field: 'length', in: 'querystring', detail: /WARPD_MAX_BODY_BYTES/ })
  const missing = await app.inject({ method: 'GET', url: `/v1/processes/${pid}/memory/${addr}`, headers: a.headers })
  t.match(problem(missing), { status: 400, field: 'length' })

  const json = await app.inject({ method: 'PUT', url: `/v1/processes/${pid}/memory/${addr}`, headers: a.headers, payload: { bytes: [1, 2] } })
  t.equal(json.statusCode, 415)
  t.equal(problem(json).code, 'WD_ERR_UNSUPPORTED_MEDIA_TYPE')
  const text = await app.inject({ method: 'PUT', url: `/v1/processes/${pid}/memory/${addr}`, headers: { ...a.headers, 'content-type': 'text/plain' }, payload: 'hi' })
  t.equal(text.statusCode, 415)
  t.equal(problem(text).code, 'WD_ERR_UNSUPPORTED_MEDIA_TYPE')
})
