import crypto from 'node:crypto'
import zlib from 'node:zlib'
import t from 'tap'
import { CR_SIZE, DESC_SIZE, Flag, Opcode, Status, readCompletion } from '../../src/hw/descriptor.ts'
import { OCTET, adminHeaders, build, createProcess, createQueue, createTenant, encodeDescriptors, load, mmap, problem, store, type TestTenant, waitFor } from '../helper.ts'

const P = 4096

function records (raw: Buffer): Array<ReturnType<typeof readCompletion>> {
  const out = []
  for (let i = 0; i < raw.length; i += CR_SIZE) out.push(readCompletion(raw, i))
  return out
}

function hex (n: number): string {
  return `0x${n.toString(16)}`
}

t.test('octet-stream: N x 64 descriptor bytes in, N x 32 completion bytes out, in order', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd1', { pid })
  const buf = Number(await mmap(app, a, pid, { length: 16 * P, prot: 'rw' }))
  const data = crypto.randomBytes(2 * P + 99)
  await store(app, a, pid, buf + 5, data)
  const cr = buf + 15 * P
  const body = encodeDescriptors([
    { opcode: Opcode.SHA256, src: buf + 5, dst: buf + 4 * P, size: data.length, tag: 11n, flags: Flag.COMPLETION_RECORD | Flag.NOTIFY, completionAddr: cr },
    { opcode: Opcode.DEFLATE, src: buf + 5, dst: buf + 5 * P, size: data.length, dstSize: 4 * P, tag: 12n, opArgs: new Uint8Array(16).fill(9, 0, 1) },
    { opcode: Opcode.CRC32, src: buf + 5, size: data.length, tag: 13n },
    { opcode: Opcode.MEMMOVE, src: 0x1000, dst: buf, size: 8, tag: 14n },
    { opcode: 0x42, tag: 15n }
  ])
  const res = await app.inject({ method: 'POST', url: `/v1/queues/${q.qid}/submit`, headers: { ...a.headers, 'content-type': OCTET }, payload: body })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^application\/octet-stream/)
  t.equal(res.rawPayload.length, 5 * CR_SIZE)
  const [sha, def, crc, fault, bad] = records(res.rawPayload)
  t.same([sha, def, crc, fault, bad].map(r => r.tag), [11n, 12n, 13n, 14n, 15n], 'in order')
  t.equal(sha.status, Status.SUCCESS)
  t.same(await load(app, a, pid, buf + 4 * P, 32), crypto.createHash('sha256').update(data).digest(), 'SHA256 matches node:crypto')
  t.equal(readCompletion(await load(app, a, pid, cr, 32)).status, Status.SUCCESS, 'the record landed in memory too')
  t.equal(def.status, Status.SUCCESS)
  t.same(zlib.inflateRawSync(await load(app, a, pid, buf + 5 * P, def.value)), data, 'DEFLATE inflates back')
  t.equal(crc.value, zlib.crc32(data))
  t.equal(fault.status, Status.PAGE_FAULT)
  t.equal(fault.faultAddr, 0x1000, 'the tenant\'s address, never an IOVA')
  t.equal(bad.status, Status.INVALID_OPCODE)
  t.equal(app.inflight.get(a.id), 0, 'nothing left counted in flight')
})

t.test('JSON: an array of descriptors in, an array of completions out', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd1', { pid })
  const buf = Number(await mmap(app, a, pid, { length: 8 * P, prot: 'rw' }))
  await store(app, a, pid, buf, Buffer.from('mediated'))
  const res = await app.inject({
    method: 'POST',
    url: `/v1/queues/${q.qid}/submit`,
    headers: a.headers,
    payload: [
      { opcode: 'MEMMOVE', src: hex(buf), dst: hex(buf + P), size: 8, tag: '0xfeedfacecafebeef' },
      { opcode: 'FILL', dst: hex(buf + 2 * P), size: 16, pattern: '0x0102030405060708', flags: ['FENCE'] },
      { opcode: 'COMPARE', src: hex(buf), dst: hex(buf + P), size: 8, tag: 3 },
      { opcode: 'NOOP', tag: '0x4', pasid: 77 }
    ]
  })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^application\/json/)
  t.same(res.json(), [
    { status: 'SUCCESS', result: 0, fault_info: 0, bytes_completed: 8, fault_addr: '0x0', tag: '0xfeedfacecafebeef', value: 0 },
    { status: 'SUCCESS', result: 0, fault_info: 0, bytes_completed: 16, fault_addr: '0x0', tag: '0x0', value: 0 },
    { status: 'SUCCESS', result: 0, fault_info: 0, bytes_completed: 8, fault_addr: '0x0', tag: '0x3', value: 0 },
    { status: 'SUCCESS', result: 0, fault_info: 0, bytes_completed: 0, fault_addr: '0x0', tag: '0x4', value: 0 }
  ])
  t.same((await load(app, a, pid, buf + P, 8)).toString(), 'mediated')
  t.same([...await load(app, a, pid, buf + 2 * P, 16)], [8, 7, 6, 5, 4, 3, 2, 1, 8, 7, 6, 5, 4, 3, 2, 1], 'the pattern, a little-endian u64, repeated')

  const fault = await app.inject({ method: 'POST', url: `/v1/queues/${q.qid}/submit`, headers: a.headers, payload: [{ opcode: 'FILL', dst: '0x7000', size: 8 }] })
  t.match(fault.json(), [{ status: 'PAGE_FAULT', fault_addr: '0x7000', fault_info: 3 }], 'write fault, no mapping')
})

t.test('a submission on an SVA queue: the kernel rings the doorbell for the tenant', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const buf = Number(await mmap(app, a, pid, { length: 2 * P, prot: 'rw' }))
  await store(app, a, pid, buf, Buffer.from('sva'))
  for (const kind of ['dedicated', 'shared']) {
    const q = await createQueue(app, a, 'wd0', { pid, kind })
    const res = await app.inject({ method: 'POST', url: `/v1/queues/${q.qid}/submit`, headers: a.headers, payload: [{ opcode: 'CRC32', src: hex(buf), size: 3, tag: '0x9' }] })
    t.match(res.json(), [{ status: 'SUCCESS', tag: '0x9', value: zlib.crc32('sva') }], kind)
  }
})

t.test('bad bodies: 400 naming the problem, 413 over 4096 descriptors, 415 for text', async t => {
  const app = await build(t)
  const a = await createTenant(app, { inflight: 4096 })
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd1', { pid })
  const url = `/v1/queues/${q.qid}/submit`
  const octet = { ...a.headers, 'content-type': OCTET }
  const send = async (payload: unknown, headers: Record<string, string> = a.headers): Promise<ReturnType<typeof problem>> =>
    problem(await app.inject({ method: 'POST', url, headers, payload: payload as string }))

  t.match(await send(Buffer.alloc(65), octet), { status: 400, code: 'WD_ERR_VALIDATION', field: 'body', detail: /whole number of 64-byte descriptors, got 65 bytes/ })
  t.match(await send(Buffer.alloc(0), octet), { status: 400, code: 'WD_ERR_VALIDATION', field: 'body' })
  t.match(await send(undefined), { status: 400, code: 'WD_ERR_VALIDATION', detail: /is empty/ })
  t.match(await send([]), { status: 400, code: 'WD_ERR_VALIDATION', detail: /at least one descriptor/ })
  t.match(await send({ opcode: 'NOOP' }), { status: 400, code: 'WD_ERR_VALIDATION', detail: /JSON array of descriptors/ })
  t.match(await send([{ opcode: 'NOOP' }, { opcode: 'SHA256', size: 'big' }]), { status: 400, code: 'WD_ERR_VALIDATION', field: '1.size', in: 'body' })
  t.match(await send([{ opcode: 'NOOP', bogus: 1 }]), { field: '0.bogus', detail: /unknown descriptor field "bogus"/ })
  t.match(await send([{ opcode: 'SHA257' }]), { field: '0.opcode' })
  t.match(await send([{ opcode: 'NOOP', src: 4096.5 }]), { field: '0.src' })
  t.match(await send([{ opcode: 'NOOP', src: '4096' }]), { field: '0.src', detail: /hex string/ }, 'a decimal string is not a hex address, coerced or not')
  t.match(await send([{ opcode: 'NOOP', flags: ['FAST'] }]), { field: '0.flags' })
  t.match(await send([17]), { field: '0', detail: /must be a JSON object/ })
  t.match(await send(Buffer.alloc(4097 * DESC_SIZE), octet), { status: 413, code: 'WD_ERR_PAYLOAD_TOO_LARGE', detail: /4097 descriptors/ })
  t.match(await send(Array.from({ length: 4097 }, () => ({ opcode: 'NOOP' }))), { status: 413 })
  t.match(await send('NOOP', { ...a.headers, 'content-type': 'text/plain' }), { status: 415 })
  const badQid = await app.inject({ method: 'POST', url: '/v1/queues/nope/submit', headers: a.headers, payload: [{ opcode: 'NOOP' }] })
  t.match(problem(badQid), { status: 400, code: 'WD_ERR_VALIDATION', field: 'qid', in: 'params' })
  t.equal(app.uacce.device('wd1')?.dev.queues.reduce((n, hq) => n + hq.counters.submitted, 0), 0, 'nothing reached the device')

  // A full 4096 is fine.
  const full = await app.inject({ method: 'POST', url, headers: octet, payload: encodeDescriptors(Array.from({ length: 4096 }, (_, i) => ({ opcode: Opcode.NOOP, tag: BigInt(i) }))) })
  t.equal(full.statusCode, 200)
  const rs = records(full.rawPayload)
  t.ok(rs.length === 4096 && rs.every((r, i) => r.status === Status.SUCCESS && r.tag === BigInt(i)), '4096 completions in order')
})

t.test('the in-flight quota: 429 with Retry-After while full, 409 for a submission that can never fit', async t => {
  const app = await build(t)
  const created = await app.inject({ method: 'POST', url: '/v1/admin/tenants', headers: adminHeaders, payload: { name: 'small', quotas: { inflight: 8 } } })
  const a: TestTenant = { id: created.json().id, token: created.json().token, headers: { authorization: `Bearer ${created.json().token as string}` } }
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd1', { pid })
  const buf = Number(await mmap(app, a, pid, { length: 260 * P, prot: 'rw' }))
  await store(app, a, pid, buf, new Uint8Array(256 * P).fill(3))
  const url = `/v1/queues/${q.qid}/submit`
  const octet = { ...a.headers, 'content-type': OCTET }

  const tooBig = await app.inject({ method: 'POST', url, headers: octet, payload: encodeDescriptors(Array.from({ length: 9 }, () => ({ opcode: Opcode.NOOP }))) })
  t.match(problem(tooBig), { status: 409, code: 'WD_ERR_QUOTA', detail: /in-flight quota is 8/ })

  // Eight descriptors hold the whole quota: the kernel queues are stopped (isolated) so
  // they wait there, whatever the machine's speed, until the isolation is cleared.
  const wd1 = app.uacce.device('wd1')
  for (const hw of wd1?.kernelQueues ?? []) wd1?.dev.isolate(hw, 'held by the test')
  const slow = app.inject({ method: 'POST', url, headers: octet, payload: encodeDescriptors(Array.from({ length: 8 }, (_, i) => ({ opcode: Opcode.SHA256, src: buf, dst: buf + 258 * P, size: 256 * P, tag: BigInt(i) }))) })
  await waitFor(() => (app.inflight.get(a.id) ?? 0) > 0, 'the submission to be in flight')
  const refused = await app.inject({ method: 'POST', url, headers: octet, payload: encodeDescriptors([{ opcode: Opcode.NOOP }]) })
  t.equal(refused.statusCode, 429)
  t.equal(refused.headers['retry-after'], '1')
  t.match(problem(refused), { code: 'WD_ERR_INFLIGHT', retryAfter: 1, detail: /8 descriptors in flight \+ 1 exceeds the quota of 8/ })
  for (const hw of wd1?.kernelQueues ?? []) wd1?.dev.clearIsolation(hw)
  const done = await slow
  t.ok(records(done.rawPayload).every(r => r.status === Status.SUCCESS), 'the running submission was not disturbed')
  t.equal(app.inflight.get(a.id), 0)
  const after = await app.inject({ method: 'POST', url, headers: octet, payload: encodeDescriptors([{ opcode: Opcode.NOOP }]) })
  t.equal(after.statusCode, 200, 'room again once it answered')
})

t.test('releasing a queue during a submission: every descriptor answered, the rest ABORTED', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd1', { pid })
  const buf = Number(await mmap(app, a, pid, { length: 260 * P, prot: 'rw' }))
  const url = `/v1/queues/${q.qid}/submit`
  // Half the work runs, the rest is held (one kernel queue stopped) when the release comes.
  const wd1 = app.uacce.device('wd1')
  const held = wd1?.kernelQueues[1]
  if (held !== undefined) wd1?.dev.isolate(held, 'held by the test')
  const pending = app.inject({ method: 'POST', url, headers: { ...a.headers, 'content-type': OCTET }, payload: encodeDescriptors(Array.from({ length: 300 }, (_, i) => ({ opcode: Opcode.SHA256, src: buf, dst: buf + 258 * P, size: 256 * P, tag: BigInt(i) }))) })
  await waitFor(() => (app.uacce.queues.get(q.qid)?.inflight ?? 0) > 0, 'the submission to be in flight')
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/queues/${q.qid}`, headers: a.headers })).statusCode, 204)
  if (held !== undefined) wd1?.dev.clearIsolation(held)
  const rs = records((await pending).rawPayload)
  t.equal(rs.length, 300, 'every descriptor answered')
  t.ok(rs.every(r => r.status === Status.SUCCESS || r.status === Status.ABORTED))
  t.ok(rs.some(r => r.status === Status.ABORTED), 'the release aborted what had not run')
  t.equal(app.kernel.meta.pincount.reduce((x, y) => x + y, 0), 0, 'no pin left behind')
})

t.test('a descriptor address at or above 2^53 completes PAGE_FAULT with its exact address', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd1', { pid })
  const buf = await mmap(app, a, pid, { length: P, prot: 'rw' })
  const res = await app.inject({ method: 'POST', url: `/v1/queues/${q.qid}/submit`, headers: a.headers, payload: [{ opcode: 'MEMMOVE', src: '0xfffffffffffff000', dst: buf, size: 1 }] })
  t.equal(res.statusCode, 200)
  t.match(res.json(), [{ status: 'PAGE_FAULT', fault_addr: '0xfffffffffffff000' }])
})
