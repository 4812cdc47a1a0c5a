import t from 'tap'
import { ConfigError, loadConfig } from '../../src/config.ts'

t.test('defaults', async t => {
  const c = loadConfig({})
  t.equal(c.WARPD_PORT, 8080)
  t.equal(c.WARPD_HOST, '127.0.0.1')
  t.equal(c.WARPD_PHYS_MEM_BYTES, 64 * 2 ** 20)
  t.equal(c.WARPD_STATE_DIR, './state')
  t.equal(c.WARPD_LOG_LEVEL, 'info')
  t.equal(c.WARPD_MAX_BODY_BYTES, 8 * 2 ** 20)
  t.equal(c.WARPD_RATE_LIMIT, 1000)
  t.equal(c.WARPD_ADMIN_TOKEN, undefined)
  t.equal(c.WARPD_DEVICES_FILE, undefined)
  t.equal(c.WARPD_ENGINE_POLL_US, undefined, 'each device keeps its own pollUs')
  t.equal(loadConfig({ WARPD_ENGINE_POLL_US: '0' }).WARPD_ENGINE_POLL_US, 0)
})

t.test('strings from the environment are coerced; empty means unset', async t => {
  const c = loadConfig({ WARPD_PORT: '9000', WARPD_RATE_LIMIT: '5', WARPD_HOST: '', WARPD_DEVICES_FILE: 'devices.json', OTHER: 'x' })
  t.equal(c.WARPD_PORT, 9000)
  t.equal(c.WARPD_RATE_LIMIT, 5)
  t.equal(c.WARPD_HOST, '127.0.0.1')
  t.equal(c.WARPD_DEVICES_FILE, 'devices.json')
  t.notOk('OTHER' in c)
})

t.test('errors name the variable', async t => {
  const cases: Array<[Record<string, string>, string, RegExp]> = [
    [{ WARPD_PORT: 'abc' }, 'WARPD_PORT', /WARPD_PORT must be integer, got "abc"/],
    [{ WARPD_PORT: '70000' }, 'WARPD_PORT', /WARPD_PORT must be <= 65535/],
    [{ WARPD_PHYS_MEM_BYTES: '1000000' }, 'WARPD_PHYS_MEM_BYTES', /WARPD_PHYS_MEM_BYTES must be multiple of 4096/],
    [{ WARPD_LOG_LEVEL: 'loud' }, 'WARPD_LOG_LEVEL', /WARPD_LOG_LEVEL must be one of fatal, error/],
    [{ WARPD_MAX_BODY_BYTES: '-1' }, 'WARPD_MAX_BODY_BYTES', /WARPD_MAX_BODY_BYTES must be >= 1024/],
    [{ WARPD_RATE_LIMIT: '0' }, 'WARPD_RATE_LIMIT', /WARPD_RATE_LIMIT must be >= 1/],
    [{ WARPD_ENGINE_POLL_US: '-5' }, 'WARPD_ENGINE_POLL_US', /WARPD_ENGINE_POLL_US must be >= 0/],
    [{ WARPD_ENGINE_POLL_US: 'often' }, 'WARPD_ENGINE_POLL_US', /WARPD_ENGINE_POLL_US must be integer/]
  ]
  for (const [env, name, re] of cases) {
    t.throws(() => loadConfig(env), { name: 'ConfigError', message: re, variables: [name] }, name)
  }
})

t.test('several bad variables are all named', async t => {
  try {
    loadConfig({ WARPD_PORT: 'x', WARPD_RATE_LIMIT: '0' })
    t.fail('should throw')
  } catch (e) {
    t.ok(e instanceof ConfigError)
    t.same((e as ConfigError).variables.sort(), ['WARPD_PORT', 'WARPD_RATE_LIMIT'])
  }
})

t.test('a bad admin token is named but never printed', async t => {
  try {
    loadConfig({ WARPD_ADMIN_TOKEN: 'sekrit' })
    t.fail('should throw')
  } catch (e) {
    const message = (e as Error).message
    t.match(message, /WARPD_ADMIN_TOKEN must NOT have fewer than 16 characters/)
    t.notMatch(message, /sekrit/)
  }
})
