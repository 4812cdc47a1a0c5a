import t from 'tap'
import { build, problem } from '../helper.ts'

t.test('liveness and readiness, without a token', async t => {
  const app = await build(t)
  const live = await app.inject({ method: 'GET', url: '/healthz' })
  t.equal(live.statusCode, 200)
  t.same(live.json(), { status: 'ok' })
  const ready = await app.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 200)
  t.same(ready.json(), { status: 'ready' })

  app.lifecycle.state = 'closing'
  const closing = await app.inject({ method: 'GET', url: '/readyz' })
  t.equal(closing.statusCode, 503)
  t.match(problem(closing), { code: 'WD_ERR_UNAVAILABLE', status: 503 })
  app.lifecycle.state = 'ready'
})

t.test('closing marks the app not ready', async t => {
  const app = await build(t)
  t.equal(app.lifecycle.state, 'ready')
  await app.close()
  t.equal(app.lifecycle.state, 'closing')
})

t.test('the docs are served', async t => {
  const app = await build(t)
  const json = await app.inject({ method: 'GET', url: '/docs/json' })
  t.equal(json.statusCode, 200)
  t.equal(json.json().openapi, '3.0.3')
  const ui = await app.inject({ method: 'GET', url: '/docs/' })
  t.equal(ui.statusCode, 200)
  t.match(ui.headers['content-type'], /text\/html/)
})
