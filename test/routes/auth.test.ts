import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { FastifyPluginAsync } from 'fastify'
import t from 'tap'
import { ROUTES } from '../../src/app.ts'
import { ADMIN_TOKEN, adminHeaders, build, createTenant, problem, tempStateDir } from '../helper.ts'

t.test('admin routes want the admin token', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const none = await app.inject({ method: 'GET', url: '/v1/admin/tenants' })
  t.equal(none.statusCode, 401)
  t.equal(problem(none).code, 'WD_ERR_UNAUTHORIZED')
  t.match(none.headers['www-authenticate'], /^Bearer/)
  const unknown = await app.inject({ method: 'GET', url: '/v1/admin/tenants', headers: { authorization: 'Bearer nobody-has-this-token' } })
  t.equal(unknown.statusCode, 401)
  const basic = await app.inject({ method: 'GET', url: '/v1/admin/tenants', headers: { authorization: `Basic ${ADMIN_TOKEN}` } })
  t.equal(basic.statusCode, 401)
  const tenant = await app.inject({ method: 'GET', url: '/v1/admin/tenants', headers: a.headers })
  t.equal(tenant.statusCode, 403)
  t.equal(problem(tenant).code, 'WD_ERR_FORBIDDEN')
  const post = await app.inject({ method: 'POST', url: '/v1/admin/tenants', headers: a.headers, payload: { name: 'x' } })
  t.equal(post.statusCode, 403)
})

t.test('without WARPD_ADMIN_TOKEN one is generated, kept 0600, and reused', async t => {
  const stateDir = tempStateDir(t)
  const first = await build(t, { WARPD_STATE_DIR: stateDir, WARPD_ADMIN_TOKEN: undefined })
  const path = join(stateDir, 'admin-token')
  const token = (await readFile(path, 'utf8')).trim()
  t.match(token, /^wda_[A-Za-z0-9_-]{43}$/)
  t.equal((await stat(path)).mode & 0o777, 0o600)
  const ok = await first.inject({ method: 'GET', url: '/v1/admin/tenants', headers: { authorization: `Bearer ${token}` } })
  t.equal(ok.statusCode, 200)
  const old = await first.inject({ method: 'GET', url: '/v1/admin/tenants', headers: adminHeaders })
  t.equal(old.statusCode, 401)
  await first.close()

  const second = await build(t, { WARPD_STATE_DIR: stateDir, WARPD_ADMIN_TOKEN: undefined })
  const again = await second.inject({ method: 'GET', url: '/v1/admin/tenants', headers: { authorization: `Bearer ${token}` } })
  t.equal(again.statusCode, 200, 'the same token after a restart')
})

t.test('tenant routes want a tenant token, and count requests', async t => {
  let now = 1_000_000
  const app = await build(t, { WARPD_RATE_LIMIT: 2 }, { clock: () => now })
  const a = await createTenant(app)
  const b = await createTenant(app)

  const admin = await app.inject({ method: 'GET', url: '/v1/processes', headers: adminHeaders })
  t.equal(admin.statusCode, 403, 'the admin token is not a tenant')
  const none = await app.inject({ method: 'GET', url: '/v1/processes' })
  t.equal(none.statusCode, 401)
  const forged = await app.inject({ method: 'GET', url: '/v1/processes', headers: { authorization: `Bearer ${a.token.slice(0, -4)}AAAA` } })
  t.equal(forged.statusCode, 401, 'a right id with a wrong secret')

  for (let i = 0; i < 2; i++) {
    const res = await app.inject({ method: 'GET', url: '/v1/processes', headers: a.headers })
    t.equal(res.statusCode, 200)
  }
  const limited = await app.inject({ method: 'GET', url: '/v1/processes', headers: a.headers })
  t.equal(limited.statusCode, 429)
  t.match(problem(limited), { code: 'WD_ERR_RATE_LIMITED', retryAfter: 1 })
  t.equal(limited.headers['retry-after'], '1')

  const other = await app.inject({ method: 'GET', url: '/v1/processes', headers: b.headers })
  t.equal(other.statusCode, 200, 'buckets are per tenant')

  now += 500
  const refilled = await app.inject({ method: 'GET', url: '/v1/processes', headers: a.headers })
  t.equal(refilled.statusCode, 200, 'half a second refills one token at 2/s')
  const empty = await app.inject({ method: 'GET', url: '/v1/processes', headers: a.headers })
  t.equal(empty.statusCode, 429)

  const adminAgain = await app.inject({ method: 'GET', url: '/v1/admin/tenants', headers: adminHeaders })
  t.equal(adminAgain.statusCode, 200, 'the admin is not rate limited')
  const health = await app.inject({ method: 'GET', url: '/healthz' })
  t.equal(health.statusCode, 200, 'nor are the probes')
})

t.test('a route in the wrong auth scope stops the start', async t => {
  const stray: FastifyPluginAsync = async (fastify) => {
    fastify.get('/v1/admin/oops', async () => 'x')
  }
  await t.rejects(build(t, {}, { routes: [...ROUTES, { scope: 'tenant', plugin: stray }] }), /route \/v1\/admin\/oops registered in the tenant scope/)
  const publicV1: FastifyPluginAsync = async (fastify) => {
    fastify.get('/v1/open', async () => 'x')
  }
  await t.rejects(build(t, {}, { routes: [{ scope: 'public', plugin: publicV1 }] }), /registered in the public scope/)
})
