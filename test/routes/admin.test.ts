import { readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { adminHeaders, build, createTenant, problem, tempStateDir } from '../helper.ts'

t.test('create, list, show and delete a tenant', async t => {
  const app = await build(t)
  const res = await app.inject({
    method: 'POST',
    url: '/v1/admin/tenants',
    headers: adminHeaders,
    payload: { name: 'acme', quotas: { processes: 3 }, weight: 7 }
  })
  t.equal(res.statusCode, 201)
  const created = res.json()
  t.match(created, {
    id: /^t_[0-9a-f]{16}$/,
    name: 'acme',
    quotas: { processes: 3, memoryBytes: 1024 * 2 ** 20, queues: 16, inflight: 1024 },
    weight: 7,
    token: /^wd_t_[0-9a-f]{16}_/
  })

  const list = await app.inject({ method: 'GET', url: '/v1/admin/tenants', headers: adminHeaders })
  t.equal(list.statusCode, 200)
  t.same(list.json().tenants.map((x: { id: string }) => x.id), [created.id])
  t.notOk('token' in list.json().tenants[0], 'the token is shown once only')

  const headers = { authorization: `Bearer ${String(created.token)}` }
  await app.inject({ method: 'POST', url: '/v1/processes', headers })
  const one = await app.inject({ method: 'GET', url: `/v1/admin/tenants/${String(created.id)}`, headers: adminHeaders })
  t.equal(one.statusCode, 200)
  t.match(one.json(), { id: created.id, usage: { processes: 1, memoryBytes: 0, files: 0 } })

  const del = await app.inject({ method: 'DELETE', url: `/v1/admin/tenants/${String(created.id)}`, headers: adminHeaders })
  t.equal(del.statusCode, 204)
  t.equal(app.kernel.processes.size, 0, 'its processes exited')
  const gone = await app.inject({ method: 'GET', url: `/v1/admin/tenants/${String(created.id)}`, headers: adminHeaders })
  t.equal(gone.statusCode, 404)
  t.equal(problem(gone).code, 'WD_ERR_NOT_FOUND')
  const again = await app.inject({ method: 'DELETE', url: `/v1/admin/tenants/${String(created.id)}`, headers: adminHeaders })
  t.equal(again.statusCode, 404)
  const denied = await app.inject({ method: 'GET', url: '/v1/processes', headers })
  t.equal(denied.statusCode, 401, 'the token of a deleted tenant stops working')
})

t.test('deleting a tenant unlinks its files', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  await app.inject({ method: 'POST', url: '/v1/files', headers: a.headers, payload: { size: 10 } })
  t.equal(app.kernel.files.size, 1)
  await app.inject({ method: 'DELETE', url: `/v1/admin/tenants/${a.id}`, headers: adminHeaders })
  t.equal(app.kernel.files.size, 0)
})

t.test('validation names the field', async t => {
  const app = await build(t)
  const cases: Array<[unknown, string]> = [
    [{}, 'name'],
    [{ name: 'Bad Name' }, 'name'],
    [{ name: 'ok', weight: 0 }, 'weight'],
    [{ name: 'ok', weight: 1001 }, 'weight'],
    [{ name: 'ok', quotas: { memoryBytes: -1 } }, 'quotas.memoryBytes'],
    [{ name: 'ok', quotas: { cpus: 1 } }, 'quotas.cpus'],
    [{ name: 'ok', colour: 'red' }, 'colour']
  ]
  for (const [payload, field] of cases) {
    const res = await app.inject({ method: 'POST', url: '/v1/admin/tenants', headers: adminHeaders, payload: payload as object })
    t.equal(res.statusCode, 400, field)
    t.match(problem(res), { code: 'WD_ERR_VALIDATION', field, in: 'body', status: 400 }, field)
  }
  const bad = await app.inject({ method: 'GET', url: '/v1/admin/tenants/nope', headers: adminHeaders })
  t.match(problem(bad), { status: 400, field: 'tenant', in: 'params' })
})

t.test('a tenant name is unique', async t => {
  const app = await build(t)
  await createTenant(app, {}, 'dup')
  const res = await app.inject({ method: 'POST', url: '/v1/admin/tenants', headers: adminHeaders, payload: { name: 'dup' } })
  t.equal(res.statusCode, 409)
  t.equal(problem(res).code, 'WD_ERR_CONFLICT')
})

t.test('tenants survive a restart; only the token hash is on disk', async t => {
  const stateDir = tempStateDir(t)
  const first = await build(t, { WARPD_STATE_DIR: stateDir })
  const a = await createTenant(first, { processes: 5 }, 'persistent')
  await first.close()

  const text = await readFile(join(stateDir, 'tenants.json'), 'utf8')
  t.notMatch(text, a.token, 'the token is not on disk')
  t.notMatch(text, a.token.split('_').at(-1) as string, 'nor its secret part')
  const saved = JSON.parse(text)
  t.match(saved, { version: 1, tenants: [{ id: a.id, name: 'persistent', tokenHash: /^sha256:[0-9a-f]{64}$/ }] })
  t.equal((await stat(join(stateDir, 'tenants.json'))).mode & 0o777, 0o600)

  const second = await build(t, { WARPD_STATE_DIR: stateDir })
  const res = await second.inject({ method: 'POST', url: '/v1/processes', headers: a.headers })
  t.equal(res.statusCode, 201, 'the token still works')
  const show = await second.inject({ method: 'GET', url: `/v1/admin/tenants/${a.id}`, headers: adminHeaders })
  t.match(show.json(), { name: 'persistent', quotas: { processes: 5 } })
})

t.test('a corrupt tenants file stops the start with its path', async t => {
  const stateDir = tempStateDir(t)
  await writeFile(join(stateDir, 'tenants.json'), '{"version":1,"tenants":[{"id":"x"}]}')
  await t.rejects(build(t, { WARPD_STATE_DIR: stateDir }), /tenants\.json is not a tenants file/)
  await writeFile(join(stateDir, 'tenants.json'), '{not json')
  await t.rejects(build(t, { WARPD_STATE_DIR: stateDir }), /tenants\.json is not JSON/)
})
