import t from 'tap'
import { build, createTenant, problem } from '../helper.ts'

const OCTET = 'application/octet-stream'

t.test('create, write, read, fsync, list, delete', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const res = await app.inject({ method: 'POST', url: '/v1/files', headers: a.headers, payload: { size: 100 } })
  t.equal(res.statusCode, 201)
  const f = res.json()
  t.match(f, { id: /^file-\d+$/, size: 100, cachedPages: 0, dirtyPages: 0, pagesWrittenBack: 0, mapCount: 0 })

  const empty = await app.inject({ method: 'POST', url: '/v1/files', headers: a.headers, payload: {} })
  t.equal(empty.json().size, 0, 'size defaults to 0')

  const put = await app.inject({ method: 'PUT', url: `/v1/files/${String(f.id)}/data?offset=4090`, headers: { ...a.headers, 'content-type': OCTET }, payload: Buffer.from('0123456789') })
  t.equal(put.statusCode, 200)
  t.same(put.json(), { written: 10, size: 4100 })

  const all = await app.inject({ method: 'GET', url: `/v1/files/${String(f.id)}/data`, headers: a.headers })
  t.equal(all.rawPayload.length, 4100)
  t.equal(all.rawPayload.subarray(4090).toString(), '0123456789')
  const part = await app.inject({ method: 'GET', url: `/v1/files/${String(f.id)}/data?offset=4095&length=100`, headers: a.headers })
  t.equal(part.body, '56789', 'cut at the file size')

  const show = (await app.inject({ method: 'GET', url: `/v1/files/${String(f.id)}`, headers: a.headers })).json()
  t.match(show, { size: 4100, cachedPages: 2, dirtyPages: 2 })
  const sync = await app.inject({ method: 'POST', url: `/v1/files/${String(f.id)}/fsync`, headers: a.headers })
  t.same(sync.json(), { pagesWritten: 2 })
  const clean = (await app.inject({ method: 'GET', url: `/v1/files/${String(f.id)}`, headers: a.headers })).json()
  t.match(clean, { dirtyPages: 0, pagesWrittenBack: 2 })

  const list = await app.inject({ method: 'GET', url: '/v1/files', headers: a.headers })
  t.equal(list.json().files.length, 2)
  const del = await app.inject({ method: 'DELETE', url: `/v1/files/${String(f.id)}`, headers: a.headers })
  t.equal(del.statusCode, 204)
  const gone = await app.inject({ method: 'GET', url: `/v1/files/${String(f.id)}`, headers: a.headers })
  t.equal(gone.statusCode, 404)
})

t.test('another tenant\'s file answers 404', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const b = await createTenant(app)
  const id = String((await app.inject({ method: 'POST', url: '/v1/files', headers: a.headers, payload: { size: 10 } })).json().id)
  const urls: Array<[string, string]> = [
    ['GET', `/v1/files/${id}`],
    ['GET', `/v1/files/${id}/data`],
    ['PUT', `/v1/files/${id}/data`],
    ['POST', `/v1/files/${id}/fsync`],
    ['DELETE', `/v1/files/${id}`]
  ]
  for (const [method, url] of urls) {
    const res = await app.inject({ method: method as 'GET', url, headers: { ...b.headers, 'content-type': OCTET }, payload: method === 'PUT' ? Buffer.from('x') : undefined })
    t.equal(res.statusCode, 404, `${method} ${url}`)
    t.match(problem(res), { code: 'WD_ERR_NOT_FOUND', detail: `file ${id} not found` })
  }
  t.same((await app.inject({ method: 'GET', url: '/v1/files', headers: b.headers })).json(), { files: [] })
})

t.test('file errors', async t => {
  const app = await build(t, { WARPD_MAX_BODY_BYTES: 4096 })
  const a = await createTenant(app)
  const huge = await app.inject({ method: 'POST', url: '/v1/files', headers: a.headers, payload: { size: 2 ** 40 } })
  t.equal(huge.statusCode, 422)
  t.equal(problem(huge).code, 'EFBIG')
  const neg = await app.inject({ method: 'POST', url: '/v1/files', headers: a.headers, payload: { size: -1 } })
  t.match(problem(neg), { status: 400, field: 'size' })
  const badId = await app.inject({ method: 'GET', url: '/v1/files/..%2Fetc', headers: a.headers })
  t.match(problem(badId), { status: 400, field: 'id', in: 'params' })

  const id = String((await app.inject({ method: 'POST', url: '/v1/files', headers: a.headers, payload: { size: 8192 } })).json().id)
  const long = await app.inject({ method: 'GET', url: `/v1/files/${id}/data`, headers: a.headers })
  t.match(problem(long), { status: 400, field: 'length', detail: /read the file in parts/ })
  const big = await app.inject({ method: 'PUT', url: `/v1/files/${id}/data`, headers: { ...a.headers, 'content-type': OCTET }, payload: Buffer.alloc(5000) })
  t.equal(big.statusCode, 413)
  const past = await app.inject({ method: 'PUT', url: `/v1/files/${id}/data?offset=${2 ** 40}`, headers: { ...a.headers, 'content-type': OCTET }, payload: Buffer.from('x') })
  t.equal(problem(past).code, 'EFBIG')
})
