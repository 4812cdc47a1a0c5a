import t from 'tap'
import { adminHeaders, build, createProcess, createQueue, createTenant, problem } from '../helper.ts'

t.test('a sync_only queue on the device without SVA, a dedicated one on the SVA device', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)

  const sync = await app.inject({ method: 'POST', url: '/v1/devices/wd1/queues', headers: a.headers, payload: { pid } })
  t.equal(sync.statusCode, 201)
  const s = sync.json()
  t.match(s, { qid: /^q-\d+$/, device: 'wd1', pid, kind: 'sync_only', flags: ['sync_only'], depth: 512, state: 'running', inflight: 0 })
  t.equal(s.submit, `/v1/queues/${s.qid}/submit`)
  t.notOk('doorbell' in s, 'no doorbell without SVA')
  t.notOk('pasid' in s)
  t.notOk('hwQueue' in s)

  const ded = await app.inject({ method: 'POST', url: '/v1/devices/wd0/queues', headers: a.headers, payload: { pid } })
  t.equal(ded.statusCode, 201)
  const d = ded.json()
  t.match(d, { device: 'wd0', kind: 'dedicated', flags: [], depth: 128, hwQueue: 0, pasid: Number, state: 'running' })
  t.equal(d.doorbell, `/v1/queues/${d.qid}/doorbell`)
  const proc = (await app.inject({ method: 'GET', url: `/v1/processes/${pid}`, headers: a.headers })).json()
  t.equal(proc.pasid, d.pasid, 'creating the queue bound the process')
  const bindings = (await app.inject({ method: 'GET', url: `/v1/processes/${pid}/bindings`, headers: a.headers })).json()
  t.same(bindings, { bindings: [{ device: 'wd0', pasid: d.pasid }] })

  const shared = await createQueue(app, a, 'wd0', { pid, kind: 'shared' })
  t.match(shared, { kind: 'shared', hwQueue: 4, pasid: d.pasid })

  const list = (await app.inject({ method: 'GET', url: '/v1/queues', headers: a.headers })).json()
  t.same(list.queues.map((q: { qid: string }) => q.qid), [s.qid, d.qid, shared.qid])
  const onWd0 = (await app.inject({ method: 'GET', url: '/v1/queues?device=wd0', headers: a.headers })).json()
  t.equal(onWd0.queues.length, 2)
  const byPid = (await app.inject({ method: 'GET', url: `/v1/queues?pid=${pid + 100}`, headers: a.headers })).json()
  t.same(byPid, { queues: [] })

  const one = await app.inject({ method: 'GET', url: `/v1/queues/${d.qid}`, headers: a.headers })
  t.same(one.json(), d)

  const del = await app.inject({ method: 'DELETE', url: `/v1/queues/${d.qid}`, headers: a.headers })
  t.equal(del.statusCode, 204)
  t.equal((await app.inject({ method: 'GET', url: `/v1/queues/${d.qid}`, headers: a.headers })).statusCode, 404)
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/queues/${d.qid}`, headers: a.headers })).statusCode, 404)
})

t.test('queue creation errors', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const b = await createTenant(app)
  const pid = await createProcess(app, a)
  const post = async (device: string, payload: Record<string, unknown>, headers = a.headers): Promise<ReturnType<typeof problem>> =>
    problem(await app.inject({ method: 'POST', url: `/v1/devices/${device}/queues`, headers, payload }))

  t.match(await post('wd1', { pid, kind: 'dedicated' }), { status: 409, code: 'WD_ERR_NO_SVA' })
  t.match(await post('wd1', { pid, kind: 'shared' }), { status: 409, code: 'WD_ERR_NO_SVA' })
  t.match(await post('wd0', { pid, kind: 'sync_only' }), { status: 400, code: 'EINVAL' })
  t.match(await post('wd7', { pid }), { status: 404, code: 'ENODEV' })
  t.match(await post('wd0', { pid: pid + 50 }), { status: 404, code: 'WD_ERR_NOT_FOUND' })
  t.match(await post('wd0', { pid }, b.headers), { status: 404, code: 'WD_ERR_NOT_FOUND' }, 'another tenant\'s process')
  t.match(await post('wd0', { pid, kind: 'turbo' }), { status: 400, code: 'WD_ERR_VALIDATION', field: 'kind' })
  t.match(await post('wd0', { pid, weight: 3 }), { status: 400, code: 'WD_ERR_VALIDATION', field: 'weight' })
  t.match(await post('wd0', {}), { status: 400, field: 'pid' })
  t.equal(app.uacce.queues.size, 0, 'nothing was created')
})

t.test('a queue is the tenant\'s own: another tenant\'s qid answers 404', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const b = await createTenant(app)
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd1', { pid })
  for (const [method, url] of [['GET', `/v1/queues/${q.qid}`], ['DELETE', `/v1/queues/${q.qid}`], ['POST', `/v1/queues/${q.qid}/submit`]] as const) {
    const res = await app.inject({ method, url, headers: b.headers, payload: method === 'POST' ? [{ opcode: 'NOOP' }] : undefined })
    t.equal(res.statusCode, 404, `${method} ${url}`)
    t.match(problem(res), { code: 'WD_ERR_NOT_FOUND', detail: `queue ${q.qid} not found` })
  }
  t.same((await app.inject({ method: 'GET', url: '/v1/queues', headers: b.headers })).json(), { queues: [] })
  t.equal((await app.inject({ method: 'GET', url: '/v1/queues/q-0x', headers: a.headers })).statusCode, 400)
  t.equal(app.uacce.queues.size, 1, 'still there')
})

t.test('the queue quota answers 409 WD_ERR_QUOTA; the tenant\'s weight goes to the hardware', async t => {
  const app = await build(t)
  const created = await app.inject({ method: 'POST', url: '/v1/admin/tenants', headers: adminHeaders, payload: { name: 'heavy', quotas: { queues: 2 }, weight: 7 } })
  const a = { headers: { authorization: `Bearer ${created.json().token as string}` }, id: created.json().id as string, token: '' }
  const pid = await createProcess(app, a)
  const q1 = await createQueue(app, a, 'wd0', { pid, kind: 'shared' })
  const q2 = await createQueue(app, a, 'wd1', { pid })
  const third = await app.inject({ method: 'POST', url: '/v1/devices/wd1/queues', headers: a.headers, payload: { pid } })
  t.match(problem(third), { status: 409, code: 'WD_ERR_QUOTA', detail: /2 of 2/ })
  t.equal(app.uacce.queues.get(q1.qid)?.port?.weight, 7, 'per-PASID weight on the shared queue')
  t.same(app.uacce.queues.get(q2.qid)?.kernelPorts.map(p => p.weight), [7, 7])
  await app.inject({ method: 'DELETE', url: `/v1/queues/${q1.qid}`, headers: a.headers })
  t.equal((await app.inject({ method: 'POST', url: '/v1/devices/wd1/queues', headers: a.headers, payload: { pid } })).statusCode, 201, 'a released queue frees its slot')
})

t.test('EBUSY under concurrent creation; available_instances exact before and after', async t => {
  const app = await build(t)
  const tenants = [await createTenant(app), await createTenant(app), await createTenant(app)]
  const pids = await Promise.all(tenants.map(async x => await createProcess(app, x)))
  const attempts = Array.from({ length: 15 }, (_, i) => i % 3)
  const results = await Promise.all(attempts.map(async i =>
    await app.inject({ method: 'POST', url: '/v1/devices/wd0/queues', headers: tenants[i].headers, payload: { pid: pids[i], kind: 'dedicated' } })))
  const ok = results.filter(r => r.statusCode === 201)
  const busy = results.filter(r => r.statusCode === 409)
  t.equal(ok.length, 4, 'as many as there are dedicated hardware queues')
  t.equal(busy.length, 11)
  for (const r of busy) t.match(problem(r), { code: 'EBUSY', detail: /every dedicated queue of wd0 is in use/ })
  t.same(ok.map(r => r.json().hwQueue).sort(), [0, 1, 2, 3], 'each on its own hardware queue')
  const avail = async (): Promise<number> => (await app.inject({ method: 'GET', url: '/v1/devices/wd0', headers: tenants[0].headers })).json().available_instances
  t.equal(await avail(), 0)
  // Shared queues are never EBUSY.
  t.equal((await app.inject({ method: 'POST', url: '/v1/devices/wd0/queues', headers: tenants[0].headers, payload: { pid: pids[0], kind: 'shared' } })).statusCode, 201)

  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  let counted = 0
  for (const m of metrics.matchAll(/^warpd_ebusy_total\{device="wd0",tenant="[^"]+"\} (\d+)$/gm)) counted += Number(m[1])
  t.equal(counted, 11, 'every EBUSY counted')

  const owner = (r: typeof ok[number]): typeof tenants[number] => tenants[pids.indexOf(r.json().pid)]
  await app.inject({ method: 'DELETE', url: `/v1/queues/${ok[0].json().qid as string}`, headers: owner(ok[0]).headers })
  t.equal(await avail(), 1)
  const again = await Promise.all([0, 1, 2].map(async i =>
    await app.inject({ method: 'POST', url: '/v1/devices/wd0/queues', headers: tenants[i].headers, payload: { pid: pids[i] } })))
  t.same(again.map(r => r.statusCode).sort(), [201, 409, 409], 'the freed one is taken once')
  for (const r of [...ok.slice(1), ...again.filter(x => x.statusCode === 201)]) {
    t.equal((await app.inject({ method: 'DELETE', url: `/v1/queues/${r.json().qid as string}`, headers: owner(r).headers })).statusCode, 204)
  }
  t.equal(await avail(), 4, 'every dedicated queue free again')
})

t.test('a process\'s exit releases its queues; a fork child has none', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd0', { pid })
  await createQueue(app, a, 'wd1', { pid })
  const fork = await app.inject({ method: 'POST', url: `/v1/processes/${pid}/fork`, headers: a.headers })
  const child = fork.json()
  t.notOk('pasid' in child, 'no PASID in the child')
  t.same((await app.inject({ method: 'GET', url: `/v1/queues?pid=${child.pid as number}`, headers: a.headers })).json(), { queues: [] })
  t.same((await app.inject({ method: 'GET', url: `/v1/processes/${child.pid as number}/bindings`, headers: a.headers })).json(), { bindings: [] })
  await app.inject({ method: 'DELETE', url: `/v1/processes/${pid}`, headers: a.headers })
  t.same((await app.inject({ method: 'GET', url: '/v1/queues', headers: a.headers })).json(), { queues: [] })
  t.equal((await app.inject({ method: 'GET', url: `/v1/queues/${q.qid}`, headers: a.headers })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: '/v1/devices/wd0', headers: a.headers })).json().available_instances, 4)
})
