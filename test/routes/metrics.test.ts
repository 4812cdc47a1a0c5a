import t from 'tap'
import { adminHeaders, build, createProcess, createQueue, createTenant, mmap } from '../helper.ts'

/** The value of the one sample matching `name{labels}` (labels given in exposition order). */
function sample (text: string, name: string, labels: string): number | undefined {
  const line = text.split('\n').find(l => l.startsWith(`${name}{${labels}} `))
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1))
}

t.test('/metrics: per device, queue and tenant, in the Prometheus text format, without a token', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const b = await createTenant(app)
  const pid = await createProcess(app, a)
  await createProcess(app, a)
  await createProcess(app, b)
  const sync = await createQueue(app, a, 'wd1', { pid })
  const ded = await createQueue(app, a, 'wd0', { pid })
  const buf = await mmap(app, a, pid, { length: 4096, prot: 'rw' })

  await app.inject({ method: 'POST', url: `/v1/queues/${sync.qid}/submit`, headers: a.headers, payload: [{ opcode: 'FILL', dst: buf, size: 100 }, { opcode: 'FILL', dst: '0x1000', size: 8 }] })
  // 200 NOOPs on a dedicated queue 128 deep: the ring fills, the rest are RETRY and rung again.
  const many = await app.inject({ method: 'POST', url: `/v1/queues/${ded.qid}/submit`, headers: a.headers, payload: Array.from({ length: 200 }, () => ({ opcode: 'NOOP' })) })
  t.ok(many.json().every((c: { status: string }) => c.status === 'SUCCESS'))
  const fault = await app.inject({ method: 'POST', url: `/v1/queues/${ded.qid}/submit`, headers: a.headers, payload: [{ opcode: 'FILL', dst: '0x1000', size: 8 }] })
  t.match(fault.json(), [{ status: 'PAGE_FAULT' }])
  for (let i = 0; i < 5; i++) await app.inject({ method: 'POST', url: '/v1/devices/wd0/queues', headers: b.headers, payload: { pid: pid + 2, kind: 'dedicated' } })
  await app.inject({ method: 'POST', url: '/v1/admin/devices/wd0/queues/4/faults', headers: adminHeaders, payload: { count: 3 } })

  const res = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  const m = res.body
  const A = a.id
  const B = b.id
  let wd1Success = 0
  for (const q of ['0', '1']) wd1Success += sample(m, 'warpd_descriptors_total', `device="wd1",queue="${q}",tenant="${A}",status="SUCCESS"`) ?? 0
  t.equal(wd1Success, 1, 'the FILL that succeeded')
  t.equal(sample(m, 'warpd_mediated_descriptors_total', `device="wd1",tenant="${A}",status="SUCCESS"`), 1)
  t.equal(sample(m, 'warpd_mediated_descriptors_total', `device="wd1",tenant="${A}",status="PAGE_FAULT"`), 1, 'the FILL the kernel refused while pinning')
  t.equal(sample(m, 'warpd_mediated_descriptors_total', `device="wd0",tenant="${A}",status="SUCCESS"`), 200)
  t.equal(sample(m, 'warpd_mediated_descriptors_total', `device="wd0",tenant="${A}",status="PAGE_FAULT"`), 1)
  const hw = String(ded.hwQueue)
  t.equal(sample(m, 'warpd_descriptors_total', `device="wd0",queue="${hw}",tenant="${A}",status="SUCCESS"`), 200)
  t.equal(sample(m, 'warpd_descriptors_total', `device="wd0",queue="${hw}",tenant="${A}",status="PAGE_FAULT"`), 1, 'the FILL the device faulted on')
  t.equal(sample(m, 'warpd_descriptor_faults_total', `device="wd0",queue="${hw}",tenant="${A}"`), 1)
  t.equal(sample(m, 'warpd_descriptor_latency_seconds_count', `device="wd0",queue="${hw}",tenant="${A}"`), 201)
  t.match(m, new RegExp(`warpd_descriptor_latency_seconds_bucket\\{le="0.001",device="wd0",queue="${hw}",tenant="${A}"\\} \\d+`))
  let bytes = 0
  for (const q of ['0', '1']) bytes += sample(m, 'warpd_descriptor_bytes_total', `device="wd1",queue="${q}",tenant="${A}"`) ?? 0
  t.equal(bytes, 100)
  t.ok((sample(m, 'warpd_hw_queue_retries_total', `device="wd0",queue="${hw}"`) ?? 0) >= 72, 'RETRY counted from the queue counters')
  t.equal(sample(m, 'warpd_hw_queue_completed_total', `device="wd0",queue="${hw}"`), 201)
  t.equal(sample(m, 'warpd_hw_queue_faults_total', 'device="wd0",queue="4"'), 3, 'injected faults')
  t.equal(sample(m, 'warpd_hw_queue_state', 'device="wd0",queue="4"'), 1)
  t.equal(sample(m, 'warpd_hw_queue_occupancy', `device="wd0",queue="${hw}",mode="dedicated"`), 0)
  t.equal(sample(m, 'warpd_ebusy_total', `device="wd0",tenant="${B}"`), 2, '5 asked, 3 were free')
  t.equal(sample(m, 'warpd_device_available_instances', 'device="wd0"'), 0)
  t.ok((sample(m, 'warpd_iotlb_misses_total', 'device="wd1"') ?? 0) > 0, 'the mediated FILL walked the IOVA domain')
  t.ok(sample(m, 'warpd_iotlb_hits_total', 'device="wd0"') !== undefined)
  t.equal(sample(m, 'warpd_tenant_processes', `tenant="${A}"`), 2)
  t.equal(sample(m, 'warpd_tenant_processes', `tenant="${B}"`), 1)
  t.equal(sample(m, 'warpd_tenant_queues', `tenant="${A}",device="wd1",kind="sync_only"`), 1)
  t.equal(sample(m, 'warpd_tenant_queues', `tenant="${A}",device="wd0",kind="dedicated"`), 1)
  t.equal(sample(m, 'warpd_tenant_queues', `tenant="${B}",device="wd0",kind="dedicated"`), 3)
  t.equal(sample(m, 'warpd_tenant_inflight_descriptors', `tenant="${A}"`), 0)
  t.match(m, /# HELP warpd_descriptors_total /)
  t.match(m, /# TYPE warpd_descriptor_latency_seconds histogram/)
  t.notMatch(m, /wd_t_|Bearer/, 'no tokens')
})

t.test('each app has its own registry', async t => {
  const one = await build(t)
  const two = await build(t)
  t.not(one.metrics.registry, two.metrics.registry)
  const a = await createTenant(one)
  await createProcess(one, a)
  const m2 = (await two.inject({ method: 'GET', url: '/metrics' })).body
  t.notMatch(m2, new RegExp(a.id), 'the other app knows nothing of it')
})
