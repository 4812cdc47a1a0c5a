/**
 * Two transitive dependencies declare Node 22 in their `engines` field, so `npm ci` warns
 * EBADENGINE on the Node 20 this project runs on: `cookie` 2 (under fastify's
 * light-my-request, which `inject` uses) and `content-disposition` 3 (under
 * @fastify/static, which serves /docs). Every 2.x and 3.x release declares it, so no
 * version within their dependents' ranges avoids the warning. Both are dependency-free
 * functions of strings; this runs the parts our dependents call, on the Node running the
 * suite, against outputs the RFCs they implement fix (6265, 6266, 5987).
 */
import t from 'tap'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const lightMyRequest = require.resolve('light-my-request')
const fastifyStatic = require.resolve('@fastify/static', { paths: [require.resolve('@fastify/swagger-ui')] })

t.test('cookie, as light-my-request loads it, on this Node', async t => {
  const cookie = createRequire(lightMyRequest)('cookie') as {
    stringifySetCookie: (c: { name: string, value: string, httpOnly?: boolean, path?: string }) => string
    parseCookie: (s: string) => Record<string, string | undefined>
  }
  t.equal(cookie.stringifySetCookie({ name: 'session', value: 'a b', httpOnly: true, path: '/' }), 'session=a%20b; Path=/; HttpOnly')
  t.same({ ...cookie.parseCookie('a=1; b=%20two') }, { a: '1', b: ' two' })
})

t.test('content-disposition, as @fastify/static loads it, on this Node', async t => {
  const cd = createRequire(fastifyStatic)('content-disposition') as { create: (name: string) => string, parse: (h: string) => { type: string, parameters: Record<string, string> } }
  // RFC 6266: a token needs no quotes; a name outside ASCII goes out percent-encoded in
  // filename* (RFC 5987), with an ASCII fallback in filename
  t.equal(cd.create('report.pdf'), 'attachment; filename=report.pdf')
  t.equal(cd.create('résumé €.pdf'), 'attachment; filename="r?sum? ?.pdf"; filename*=UTF-8\'\'r%C3%A9sum%C3%A9%20%E2%82%AC.pdf')
  t.same(cd.parse('attachment; filename="x.txt"'), { type: 'attachment', parameters: { filename: 'x.txt' } })
})
