import { writeFile } from 'node:fs/promises'
import { getPriority } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { buildApp } from '../../src/app.ts'
import { loadConfig } from '../../src/config.ts'
import { loadDevicesFile } from '../../src/devices.ts'
import { ENGINE_NICE } from '../../src/hw/engine-pool.ts'
import { ADMIN_TOKEN, build, createTenant, problem, tempStateDir, testDevices } from '../helper.ts'

t.test('the devices: UACCE attributes, hardware queues, IOTLB and engines', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const res = await app.inject({ method: 'GET', url: '/v1/devices', headers: a.headers })
  t.equal(res.statusCode, 200)
  const { devices } = res.json()
  t.same(devices.map((d: { id: string }) => d.id), ['wd0', 'wd1'])
  const [wd0, wd1] = devices
  t.match(wd0, {
    id: 'wd0',
    api: 'warpdrive-v1',
    flags: 1,
    sva: true,
    available_instances: 4,
    isolate: 0,
    isolate_strategy: { faults: 64, windowMs: 60000 },
    queueDepths: [128, 128, 128, 128, 256],
    maxTransferSize: 1048576,
    maxBatchSize: 256,
    engines: 1,
    pollUs: 500,
    arbiterQuantum: 65536,
    inlineBytes: 4096,
    outstanding: 0,
    inlineJobs: 0,
    iotlb: { hits: 0, misses: 0, entries: 0, capacity: 4096 },
    enginePool: { submitted: 0, completed: 0, inflight: 0, workers: [{ alive: true }] }
  })
  t.equal(wd0.enginePool.workers[0].nice, Math.min(19, getPriority() + ENGINE_NICE), 'its engine runs below the main thread')
  t.ok(wd0.algorithms.includes('SHA256') && wd0.algorithms.includes('BATCH'))
  t.same(wd0.queues.map((q: { mode: string }) => q.mode), ['dedicated', 'dedicated', 'dedicated', 'dedicated', 'shared'])
  t.same(wd0.queues[0], {
    index: 0,
    mode: 'dedicated',
    depth: 128,
    priority: 1,
    allocated: false,
    state: 'running',
    occupancy: 0,
    pending: 0,
    ports: 0,
    counters: { submitted: 0, completed: 0, retries: 0, disabled: 0, faults: 0, aborted: 0, bytes: 0 }
  })
  t.match(wd1, { id: 'wd1', flags: 0, sva: false, available_instances: 0, queueDepths: [256, 256] })
  t.same(wd1.queues.map((q: { mode: string, allocated: boolean }) => [q.mode, q.allocated]), [['kernel', true], ['kernel', true]], 'the kernel holds its queues')

  const one = await app.inject({ method: 'GET', url: '/v1/devices/wd1', headers: a.headers })
  t.equal(one.statusCode, 200)
  t.same(one.json(), wd1)
})

t.test('device errors: unknown 404 ENODEV, a bad id 400, no token 401, the admin token 403', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const missing = await app.inject({ method: 'GET', url: '/v1/devices/wd9', headers: a.headers })
  t.equal(missing.statusCode, 404)
  t.match(problem(missing), { code: 'ENODEV', detail: 'no device wd9' })
  const bad = await app.inject({ method: 'GET', url: '/v1/devices/WD0', headers: a.headers })
  t.match(problem(bad), { code: 'WD_ERR_VALIDATION', field: 'dev', in: 'params' })
  t.equal((await app.inject({ method: 'GET', url: '/v1/devices' })).statusCode, 401)
  const admin = await app.inject({ method: 'GET', url: '/v1/devices', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.equal(admin.statusCode, 403)
})

t.test('/readyz stays starting until every device\'s engines are up', async t => {
  const config = loadConfig({ WARPD_STATE_DIR: tempStateDir(t), WARPD_ADMIN_TOKEN: ADMIN_TOKEN, WARPD_PHYS_MEM_BYTES: 1 << 20 })
  const app = await buildApp({ config, devices: testDevices() })
  t.teardown(async () => await app.close())
  let enginesUp = false
  Promise.all([...app.uacce.devices.values()].map(async d => await d.dev.pool.ready())).then(() => { enginesUp = true })
  // One more start-up gate, held by the test: readiness waits for every gate.
  let open: () => void = () => {}
  app.lifecycle.gates.push(new Promise<void>(resolve => { open = resolve }))
  await app.ready()
  const live = await app.inject({ method: 'GET', url: '/healthz' })
  t.equal(live.statusCode, 200, 'alive while starting')
  const starting = await app.inject({ method: 'GET', url: '/readyz' })
  t.equal(starting.statusCode, 503)
  t.match(problem(starting), { code: 'WD_ERR_UNAVAILABLE' })
  t.equal(app.lifecycle.state, 'starting')
  open()
  await app.lifecycle.settled
  t.ok(enginesUp, 'the engines were up before the app said ready')
  const ready = await app.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 200)
})

t.test('a start-up gate that fails keeps the app not ready', async t => {
  const config = loadConfig({ WARPD_STATE_DIR: tempStateDir(t), WARPD_ADMIN_TOKEN: ADMIN_TOKEN, WARPD_PHYS_MEM_BYTES: 1 << 20 })
  const app = await buildApp({ config, devices: testDevices() })
  t.teardown(async () => await app.close())
  app.lifecycle.gates.push(Promise.reject(new Error('engine did not start')))
  await app.ready()
  await app.lifecycle.settled
  t.equal(app.lifecycle.state, 'starting')
  t.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 503)
})

t.test('WARPD_DEVICES_FILE: devices from a file, defaults filled in', async t => {
  const dir = tempStateDir(t)
  const file = join(dir, 'devices.json')
  await writeFile(file, JSON.stringify({
    devices: [
      { id: 'acc0', sva: true, queues: [{ mode: 'dedicated' }, { mode: 'shared', depth: 64 }], algorithms: ['NOOP', 'CRC32'], isolateStrategy: {} },
      { id: 'acc1', sva: false, queues: [{ mode: 'kernel', depth: 32 }], algorithms: ['SHA256'], isolateStrategy: { faults: 3 } }
    ]
  }))
  const app = await build(t, { WARPD_DEVICES_FILE: file })
  const a = await createTenant(app)
  const { devices } = (await app.inject({ method: 'GET', url: '/v1/devices', headers: a.headers })).json()
  t.match(devices, [
    { id: 'acc0', sva: true, queueDepths: [128, 64], algorithms: ['NOOP', 'CRC32'], engines: 1, maxTransferSize: 1048576, isolate_strategy: { faults: 64, windowMs: 60000 } },
    { id: 'acc1', sva: false, queueDepths: [32], algorithms: ['SHA256'], isolate_strategy: { faults: 3, windowMs: 60000 } }
  ])
})

t.test('WARPD_ENGINE_POLL_US overrides every device\'s pollUs, whatever its file says', async t => {
  const dir = tempStateDir(t)
  const file = join(dir, 'devices.json')
  await writeFile(file, JSON.stringify({
    devices: [
      { id: 'acc0', sva: true, queues: [{ mode: 'dedicated' }], algorithms: ['NOOP'], isolateStrategy: {}, pollUs: 2000 },
      { id: 'acc1', sva: false, queues: [{ mode: 'kernel' }], algorithms: ['NOOP'], isolateStrategy: {} }
    ]
  }))
  const fromFile = await build(t, { WARPD_DEVICES_FILE: file })
  const a = await createTenant(fromFile)
  let { devices } = (await fromFile.inject({ method: 'GET', url: '/v1/devices', headers: a.headers })).json()
  t.same(devices.map((d: { pollUs: number }) => d.pollUs), [2000, 500], 'the file, else the default')
  const overridden = await build(t, { WARPD_DEVICES_FILE: file, WARPD_ENGINE_POLL_US: 0 })
  const b = await createTenant(overridden)
  ;({ devices } = (await overridden.inject({ method: 'GET', url: '/v1/devices', headers: b.headers })).json())
  t.same(devices.map((d: { pollUs: number }) => d.pollUs), [0, 0])
})

t.test('under a CPU quota of less than two CPUs the engines do not poll, unless WARPD_ENGINE_POLL_US says so', async t => {
  const pollUsOf = async (app: Awaited<ReturnType<typeof build>>): Promise<number[]> => {
    const a = await createTenant(app)
    const { devices } = (await app.inject({ method: 'GET', url: '/v1/devices', headers: a.headers })).json()
    return devices.map((d: { pollUs: number }) => d.pollUs)
  }
  t.same(await pollUsOf(await build(t, {}, { cpuLimit: 1.5 })), [0, 0], '1.5 CPUs: polling off')
  t.same(await pollUsOf(await build(t, {}, { cpuLimit: 2 })), [500, 500], 'two CPUs: as configured')
  t.same(await pollUsOf(await build(t, {}, { cpuLimit: undefined })), [500, 500], 'no quota: as configured')
  t.same(await pollUsOf(await build(t, { WARPD_ENGINE_POLL_US: 300 }, { cpuLimit: 0.5 })), [300, 300], 'the variable wins')
})

t.test('a bad devices file stops the start with the file and the bad path', async t => {
  const dir = tempStateDir(t)
  const cases: Array<[string, string, RegExp]> = [
    ['mode.json', JSON.stringify({ devices: [{ id: 'x', sva: true, queues: [{ mode: 'turbo' }], algorithms: ['NOOP'], isolateStrategy: {} }] }), /mode\.json: \/devices\/0\/queues\/0\/mode/],
    ['extra.json', JSON.stringify({ devices: [{ id: 'x', sva: true, queues: [{ mode: 'shared' }], algorithms: ['NOOP'], isolateStrategy: {}, turbo: true }] }), /extra\.json: \/devices\/0/],
    ['empty.json', JSON.stringify({ devices: [] }), /empty\.json: \/devices/],
    ['twice.json', JSON.stringify({ devices: [0, 1].map(() => ({ id: 'x', sva: false, queues: [{ mode: 'kernel' }], algorithms: ['NOOP'], isolateStrategy: {} })) }), /twice\.json: \/devices\/1\/id: device id x appears twice/],
    ['broken.json', '{"devices": [', /broken\.json: not JSON/]
  ]
  for (const [name, text, message] of cases) {
    const file = join(dir, name)
    await writeFile(file, text)
    await t.rejects(loadDevicesFile(file), { name: 'DevicesFileError', message }, name)
  }
  await t.rejects(loadDevicesFile(join(dir, 'absent.json')), { message: /absent\.json: cannot read it/ })
  const config = loadConfig({ WARPD_STATE_DIR: dir, WARPD_ADMIN_TOKEN: ADMIN_TOKEN, WARPD_DEVICES_FILE: join(dir, 'mode.json') })
  await t.rejects(buildApp({ config }), { message: /^WARPD_DEVICES_FILE .*mode\.json: \/devices\/0\/queues\/0\/mode/ }, 'buildApp refuses to start')
})
