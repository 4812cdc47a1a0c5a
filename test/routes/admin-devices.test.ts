import crypto from 'node:crypto'
import t from 'tap'
import { CR_SIZE, Opcode, Status, readCompletion } from '../../src/hw/descriptor.ts'
import { OCTET, adminHeaders, build, createProcess, createQueue, createTenant, encodeDescriptors, mmap, problem, store, waitFor } from '../helper.ts'

const P = 4096

t.test('reset: every descriptor in flight completes ABORTED, the device runs again', async t => {
  const app = await build(t, { WARPD_PHYS_MEM_BYTES: 16 * 2 ** 20 })
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd1', { pid })
  const buf = Number(await mmap(app, a, pid, { length: 520 * P, prot: 'rw' }))
  // Incompressible data at level 9: slow enough that the reset finds work in flight.
  await store(app, a, pid, buf, crypto.randomBytes(256 * P))
  const pending = app.inject({
    method: 'POST',
    url: `/v1/queues/${q.qid}/submit`,
    headers: { ...a.headers, 'content-type': OCTET },
    payload: encodeDescriptors(Array.from({ length: 24 }, (_, i) => ({ opcode: Opcode.DEFLATE, src: buf, dst: buf + 260 * P, size: 256 * P, dstSize: 260 * P, tag: BigInt(i), opArgs: new Uint8Array(16).fill(9, 0, 1) })))
  })
  const dev = app.uacce.device('wd1')?.dev
  await waitFor(() => (dev?.outstanding ?? 0) > 0, 'work in flight on wd1')
  const reset = await app.inject({ method: 'POST', url: '/v1/admin/devices/wd1/reset', headers: adminHeaders })
  t.equal(reset.statusCode, 200)
  t.match(reset.json(), { device: 'wd1', aborted: Number })
  t.ok(reset.json().aborted > 0)
  const res = await pending
  t.equal(res.statusCode, 200)
  const statuses = Array.from({ length: 24 }, (_, i) => readCompletion(res.rawPayload, i * CR_SIZE).status)
  t.ok(statuses.every(s => s === Status.SUCCESS || s === Status.ABORTED), 'every descriptor answered')
  t.equal(statuses.filter(s => s === Status.ABORTED).length, reset.json().aborted, 'what was in flight at the reset completed ABORTED')
  const after = await app.inject({ method: 'POST', url: `/v1/queues/${q.qid}/submit`, headers: a.headers, payload: [{ opcode: 'NOOP' }] })
  t.match(after.json(), [{ status: 'SUCCESS' }], 'the device runs again')
  const devView = (await app.inject({ method: 'GET', url: '/v1/devices/wd1', headers: a.headers })).json()
  t.ok(devView.queues.reduce((n: number, hq: { counters: { aborted: number } }) => n + hq.counters.aborted, 0) >= reset.json().aborted)
})

t.test('fault injection isolates a queue; an admin clears it', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd0', { pid })
  const index = q.hwQueue as number
  const url = `/v1/admin/devices/wd0/queues/${index}`
  const few = await app.inject({ method: 'POST', url: `${url}/faults`, headers: adminHeaders, payload: { count: 64 } })
  t.same(few.json(), { device: 'wd0', index, state: 'running', faults: 64 }, 'not more than the strategy allows')
  const over = await app.inject({ method: 'POST', url: `${url}/faults`, headers: adminHeaders, payload: { count: 1 } })
  t.same(over.json(), { device: 'wd0', index, state: 'isolated', faults: 65 })

  const dev = (await app.inject({ method: 'GET', url: '/v1/devices/wd0', headers: a.headers })).json()
  t.equal(dev.isolate, 1)
  t.match(dev.queues[index], { state: 'isolated', stateReason: /more than 64 faults in 60000 ms \(injected\)/ })
  t.equal((await app.inject({ method: 'GET', url: `/v1/queues/${q.qid}`, headers: a.headers })).json().state, 'isolated')
  const refused = await app.inject({ method: 'POST', url: `/v1/queues/${q.qid}/submit`, headers: a.headers, payload: [{ opcode: 'NOOP', tag: '0x5' }] })
  t.match(refused.json(), [{ status: 'QUEUE_DISABLED', tag: '0x5' }], 'an isolated queue accepts nothing')

  t.equal((await app.inject({ method: 'DELETE', url: `${url}/isolation`, headers: adminHeaders })).statusCode, 204)
  t.equal((await app.inject({ method: 'GET', url: `/v1/queues/${q.qid}`, headers: a.headers })).json().state, 'running')
  const ok = await app.inject({ method: 'POST', url: `/v1/queues/${q.qid}/submit`, headers: a.headers, payload: [{ opcode: 'NOOP' }] })
  t.match(ok.json(), [{ status: 'SUCCESS' }])
  const twice = await app.inject({ method: 'DELETE', url: `${url}/isolation`, headers: adminHeaders })
  t.equal(twice.statusCode, 409)
  t.match(problem(twice), { code: 'WD_ERR_CONFLICT', detail: /is running, not isolated/ })
})

t.test('admin device routes: the admin token only, 404 for unknown devices and queues, 400 for bad input', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  t.equal((await app.inject({ method: 'POST', url: '/v1/admin/devices/wd0/reset', headers: a.headers })).statusCode, 403)
  t.equal((await app.inject({ method: 'POST', url: '/v1/admin/devices/wd0/reset' })).statusCode, 401)
  t.match(problem(await app.inject({ method: 'POST', url: '/v1/admin/devices/wd9/reset', headers: adminHeaders })), { status: 404, code: 'ENODEV' })
  t.match(problem(await app.inject({ method: 'POST', url: '/v1/admin/devices/wd0/queues/5/faults', headers: adminHeaders, payload: { count: 1 } })), { status: 404, detail: /no hardware queue 5 \(it has 5\)/ })
  t.match(problem(await app.inject({ method: 'DELETE', url: '/v1/admin/devices/wd1/queues/9/isolation', headers: adminHeaders })), { status: 404 })
  t.match(problem(await app.inject({ method: 'POST', url: '/v1/admin/devices/wd0/queues/0/faults', headers: adminHeaders, payload: { count: 0 } })), { status: 400, field: 'count' })
  t.match(problem(await app.inject({ method: 'POST', url: '/v1/admin/devices/wd0/queues/x/faults', headers: adminHeaders, payload: { count: 1 } })), { status: 400, field: 'index', in: 'params' })
  const idle = await app.inject({ method: 'POST', url: '/v1/admin/devices/wd0/reset', headers: adminHeaders })
  t.same(idle.json(), { device: 'wd0', aborted: 0 }, 'an idle device resets with nothing to abort')
})
