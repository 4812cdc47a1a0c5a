import t from 'tap'
import { build, createProcess, createQueue, createTenant, problem } from '../helper.ts'

t.test('bind, list, unbind; the last unbind frees the PASID', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const url = `/v1/processes/${pid}/bindings`
  t.same((await app.inject({ method: 'GET', url, headers: a.headers })).json(), { bindings: [] })

  const bound = await app.inject({ method: 'POST', url, headers: a.headers, payload: { device: 'wd0' } })
  t.equal(bound.statusCode, 201)
  const { pasid } = bound.json()
  t.match(bound.json(), { device: 'wd0', pasid: Number })
  const again = await app.inject({ method: 'POST', url, headers: a.headers, payload: { device: 'wd0' } })
  t.same(again.json(), { device: 'wd0', pasid }, 'idempotent: one PASID per address space')
  t.same((await app.inject({ method: 'GET', url, headers: a.headers })).json(), { bindings: [{ device: 'wd0', pasid }] })
  t.equal((await app.inject({ method: 'GET', url: `/v1/processes/${pid}`, headers: a.headers })).json().pasid, pasid)

  const unbound = await app.inject({ method: 'DELETE', url: `${url}/wd0`, headers: a.headers })
  t.equal(unbound.statusCode, 204)
  t.same((await app.inject({ method: 'GET', url, headers: a.headers })).json(), { bindings: [] })
  t.notOk('pasid' in (await app.inject({ method: 'GET', url: `/v1/processes/${pid}`, headers: a.headers })).json(), 'the PASID went with the last binding')
  t.match(problem(await app.inject({ method: 'DELETE', url: `${url}/wd0`, headers: a.headers })), { status: 404, detail: /not bound to wd0/ })
})

t.test('binding errors: no SVA 409, unknown device 404, someone else\'s process 404', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const b = await createTenant(app)
  const pid = await createProcess(app, a)
  const url = `/v1/processes/${pid}/bindings`
  const nosva = await app.inject({ method: 'POST', url, headers: a.headers, payload: { device: 'wd1' } })
  t.equal(nosva.statusCode, 409)
  t.match(problem(nosva), { code: 'WD_ERR_NO_SVA', detail: /no shared virtual addressing/ })
  t.match(problem(await app.inject({ method: 'POST', url, headers: a.headers, payload: { device: 'wd5' } })), { status: 404, code: 'ENODEV' })
  t.match(problem(await app.inject({ method: 'POST', url, headers: a.headers, payload: {} })), { status: 400, field: 'device' })
  t.match(problem(await app.inject({ method: 'POST', url, headers: b.headers, payload: { device: 'wd0' } })), { status: 404, code: 'WD_ERR_NOT_FOUND' })
  t.equal((await app.inject({ method: 'GET', url, headers: b.headers })).statusCode, 404)
  t.equal((await app.inject({ method: 'DELETE', url: `${url}/wd0`, headers: b.headers })).statusCode, 404)
  t.match(problem(await app.inject({ method: 'DELETE', url: `${url}/wd5`, headers: a.headers })), { code: 'ENODEV' })
  t.equal(app.kernel.getProcess(pid)?.pasid, undefined, 'nothing was bound')
})

t.test('a queue on an SVA device binds; unbinding is refused while the process has queues there', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd0', { pid, kind: 'shared' })
  const url = `/v1/processes/${pid}/bindings`
  t.same((await app.inject({ method: 'GET', url, headers: a.headers })).json(), { bindings: [{ device: 'wd0', pasid: q.pasid }] })
  const busy = await app.inject({ method: 'DELETE', url: `${url}/wd0`, headers: a.headers })
  t.equal(busy.statusCode, 409)
  t.match(problem(busy), { code: 'WD_ERR_CONFLICT', detail: new RegExp(`1 queue\\(s\\) on wd0 \\(${q.qid}\\)`) })
  await app.inject({ method: 'DELETE', url: `/v1/queues/${q.qid}`, headers: a.headers })
  t.same((await app.inject({ method: 'GET', url, headers: a.headers })).json(), { bindings: [{ device: 'wd0', pasid: q.pasid }] }, 'the binding outlives the queue')
  t.equal((await app.inject({ method: 'DELETE', url: `${url}/wd0`, headers: a.headers })).statusCode, 204)

  // A sync_only queue binds nothing: there is no PASID without SVA.
  await createQueue(app, a, 'wd1', { pid })
  t.same((await app.inject({ method: 'GET', url, headers: a.headers })).json(), { bindings: [] })
})

t.test('a fork child starts unbound', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  await app.inject({ method: 'POST', url: `/v1/processes/${pid}/bindings`, headers: a.headers, payload: { device: 'wd0' } })
  const child = (await app.inject({ method: 'POST', url: `/v1/processes/${pid}/fork`, headers: a.headers })).json()
  t.same((await app.inject({ method: 'GET', url: `/v1/processes/${child.pid as number}/bindings`, headers: a.headers })).json(), { bindings: [] })
  const own = await app.inject({ method: 'POST', url: `/v1/processes/${child.pid as number}/bindings`, headers: a.headers, payload: { device: 'wd0' } })
  t.equal(own.statusCode, 201)
  const parent = (await app.inject({ method: 'GET', url: `/v1/processes/${pid}/bindings`, headers: a.headers })).json()
  t.not(own.json().pasid, parent.bindings[0].pasid, 'the child gets a PASID of its own')
})
