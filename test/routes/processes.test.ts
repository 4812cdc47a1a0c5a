import t from 'tap'
import { build, createProcess, createTenant, mmap, problem } from '../helper.ts'

t.test('create, list, show, fork and exit', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const res = await app.inject({ method: 'POST', url: '/v1/processes', headers: a.headers })
  t.equal(res.statusCode, 201)
  const p = res.json()
  t.match(p, { pid: Number, tenant: a.id, state: 'running', mappings: 0, totalVm: 0, residentPages: 0, faultsTotal: 0 })
  t.notOk('ppid' in p)
  t.notOk('pasid' in p)
  t.ok(!Number.isNaN(Date.parse(p.createdAt)))

  await mmap(app, a, p.pid, { length: 4096, prot: 'rw' })
  await mmap(app, a, p.pid, { length: 8192, prot: 'rw', dontcopy: true })

  const show = await app.inject({ method: 'GET', url: `/v1/processes/${p.pid}`, headers: a.headers })
  t.match(show.json(), { pid: p.pid, mappings: 2, totalVm: 12288 })

  const fork = await app.inject({ method: 'POST', url: `/v1/processes/${p.pid}/fork`, headers: a.headers })
  t.equal(fork.statusCode, 201)
  const child = fork.json()
  t.match(child, { ppid: p.pid, tenant: a.id, mappings: 1, totalVm: 4096 }, 'the dontcopy mapping stays with the parent')
  t.not(child.pid, p.pid)

  const list = await app.inject({ method: 'GET', url: '/v1/processes', headers: a.headers })
  t.same(list.json().processes.map((x: { pid: number }) => x.pid).sort(), [p.pid, child.pid].sort())

  const del = await app.inject({ method: 'DELETE', url: `/v1/processes/${child.pid}`, headers: a.headers })
  t.equal(del.statusCode, 204)
  t.equal(del.body, '')
  for (const [method, url] of [['GET', `/v1/processes/${child.pid}`], ['DELETE', `/v1/processes/${child.pid}`], ['POST', `/v1/processes/${child.pid}/fork`]] as const) {
    const gone = await app.inject({ method, url, headers: a.headers })
    t.equal(gone.statusCode, 404, `${method} ${url} after exit`)
    t.equal(problem(gone).code, 'WD_ERR_NOT_FOUND')
  }
})

t.test('another tenant\'s process answers 404, never 403', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const b = await createTenant(app)
  const pid = await createProcess(app, a)
  const urls: Array<[string, string]> = [
    ['GET', `/v1/processes/${pid}`],
    ['DELETE', `/v1/processes/${pid}`],
    ['POST', `/v1/processes/${pid}/fork`],
    ['GET', `/v1/processes/${pid}/mappings`],
    ['GET', `/v1/processes/${pid}/faults`],
    ['GET', `/v1/processes/${pid}/memory/0x7f0000000000?length=1`]
  ]
  for (const [method, url] of urls) {
    const res = await app.inject({ method: method as 'GET', url, headers: b.headers })
    t.equal(res.statusCode, 404, `${method} ${url}`)
    t.match(problem(res), { code: 'WD_ERR_NOT_FOUND', detail: `process ${pid} not found` })
  }
  const list = await app.inject({ method: 'GET', url: '/v1/processes', headers: b.headers })
  t.same(list.json(), { processes: [] })
  t.ok(app.kernel.getProcess(pid), 'still running')
})

t.test('bad pids answer 400 naming pid', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  for (const pid of ['abc', '0', '-1', '1.5']) {
    const res = await app.inject({ method: 'GET', url: `/v1/processes/${pid}`, headers: a.headers })
    t.equal(res.statusCode, 400, pid)
    t.match(problem(res), { code: 'WD_ERR_VALIDATION', field: 'pid', in: 'params' })
  }
})

t.test('the process quota: create and fork answer 409', async t => {
  const app = await build(t)
  const a = await createTenant(app, { processes: 2 })
  const pid = await createProcess(app, a)
  await createProcess(app, a)
  const third = await app.inject({ method: 'POST', url: '/v1/processes', headers: a.headers })
  t.equal(third.statusCode, 409)
  t.match(problem(third), { code: 'WD_ERR_QUOTA', status: 409, detail: /process quota/ })
  const fork = await app.inject({ method: 'POST', url: `/v1/processes/${pid}/fork`, headers: a.headers })
  t.equal(fork.statusCode, 409)
  t.equal(problem(fork).code, 'WD_ERR_QUOTA')

  await app.inject({ method: 'DELETE', url: `/v1/processes/${pid}`, headers: a.headers })
  const after = await app.inject({ method: 'POST', url: '/v1/processes', headers: a.headers })
  t.equal(after.statusCode, 201, 'an exited process frees its slot')
})

t.test('fork counts against the memory quota', async t => {
  const app = await build(t)
  const a = await createTenant(app, { memoryBytes: 3 * 4096 })
  const pid = await createProcess(app, a)
  await mmap(app, a, pid, { length: 2 * 4096, prot: 'rw' })
  const fork = await app.inject({ method: 'POST', url: `/v1/processes/${pid}/fork`, headers: a.headers })
  t.equal(fork.statusCode, 409)
  t.match(problem(fork), { code: 'WD_ERR_QUOTA', detail: /memory quota/ })
  t.equal([...app.kernel.processes.values()].length, 1, 'no child was made')
})

t.test('fork shares memory copy-on-write', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const addr = await mmap(app, a, pid, { length: 4096, prot: 'rw' })
  const octet = { ...a.headers, 'content-type': 'application/octet-stream' }
  await app.inject({ method: 'PUT', url: `/v1/processes/${pid}/memory/${addr}`, headers: octet, payload: Buffer.from('parent') })
  const child = (await app.inject({ method: 'POST', url: `/v1/processes/${pid}/fork`, headers: a.headers })).json().pid
  await app.inject({ method: 'PUT', url: `/v1/processes/${child}/memory/${addr}`, headers: octet, payload: Buffer.from('CHILD!') })
  const p = await app.inject({ method: 'GET', url: `/v1/processes/${pid}/memory/${addr}?length=6`, headers: a.headers })
  const c = await app.inject({ method: 'GET', url: `/v1/processes/${child}/memory/${addr}?length=6`, headers: a.headers })
  t.equal(p.body, 'parent')
  t.equal(c.body, 'CHILD!')
})
