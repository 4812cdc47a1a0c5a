/**
 * The seed's issues on the mediated path, end to end through the REST API: I1 (fork
 * during a submission), I3 (writeback during a device write), I4 (many tenants through
 * one hardware queue), error containment (reset, isolation), and the shutdown drain.
 */
import crypto from 'node:crypto'
import t from 'tap'
import { CR_SIZE, Opcode, Status, readCompletion } from '../../src/hw/descriptor.ts'
import { OCTET, adminHeaders, build, createProcess, createQueue, createTenant, encodeDescriptors, load, mmap, store, testDevices } from '../helper.ts'

const P = 4096

function statuses (raw: Buffer): number[] {
  const out: number[] = []
  for (let i = 0; i < raw.length; i += CR_SIZE) out.push(readCompletion(raw, i).status)
  return out
}

async function until (cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 20_000
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise(resolve => setImmediate(resolve))
  }
}

t.test('I1: a fork while a mediated submission is in flight: the parent\'s results land in the parent only', async t => {
  const app = await build(t, { WARPD_PHYS_MEM_BYTES: 16 * 2 ** 20 })
  const a = await createTenant(app)
  const parent = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd1', { pid: parent })
  const buf = Number(await mmap(app, a, parent, { length: 600 * P, prot: 'rw' }))
  await store(app, a, parent, buf, new Uint8Array(600 * P).fill(1))
  // Both kernel queues isolated: the submission is taken (validated, pinned, mapped) and
  // then held by the kernel, so the fork surely comes before the device writes.
  for (const index of [0, 1]) await app.inject({ method: 'POST', url: `/v1/admin/devices/wd1/queues/${index}/faults`, headers: adminHeaders, payload: { count: 65 } })
  const target = buf + 300 * P
  const pending = app.inject({
    method: 'POST',
    url: `/v1/queues/${q.qid}/submit`,
    headers: { ...a.headers, 'content-type': OCTET },
    payload: encodeDescriptors([{ opcode: Opcode.FILL, dst: target, size: 256 * P, tag: 99n, opArgs: new Uint8Array(16).fill(7, 0, 8) }])
  })
  await until(() => (app.uacce.queues.get(q.qid)?.inflight ?? 0) > 0, 'the submission is in flight')
  const fork = await app.inject({ method: 'POST', url: `/v1/processes/${parent}/fork`, headers: a.headers })
  t.equal(fork.statusCode, 201)
  const child = fork.json().pid as number
  t.ok((app.uacce.queues.get(q.qid)?.inflight ?? 0) > 0, 'the fork came while the submission was in flight')
  await app.inject({ method: 'DELETE', url: '/v1/admin/devices/wd1/queues/0/isolation', headers: adminHeaders })
  const res = await pending
  t.ok(statuses(res.rawPayload).every(s => s === Status.SUCCESS))
  t.ok((await load(app, a, parent, target, 256 * P)).every(b => b === 7), 'the device wrote the parent\'s memory')
  t.ok((await load(app, a, child, target, 256 * P)).every(b => b === 1), 'the child sees memory as it was at fork')
  t.notOk('pasid' in fork.json())
  t.same((await app.inject({ method: 'GET', url: `/v1/queues?pid=${child}`, headers: a.headers })).json(), { queues: [] }, 'the child has no queue')
  t.equal(app.kernel.meta.pincount.reduce((x, y) => x + y, 0), 0, 'every pin released')
})

t.test('I3: fsync of a file mapping while a mediated submission writes it: every page written back whole', async t => {
  const app = await build(t, { WARPD_PHYS_MEM_BYTES: 16 * 2 ** 20 })
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd1', { pid })
  const pages = 64
  const file = (await app.inject({ method: 'POST', url: '/v1/files', headers: a.headers, payload: { size: pages * P } })).json().id as string
  const fa = Number(await mmap(app, a, pid, { length: pages * P, prot: 'rw', shared: true, file }))
  await store(app, a, pid, fa, new Uint8Array(pages * P).fill(0xaa))
  const src = Number(await mmap(app, a, pid, { length: pages * P, prot: 'rw' }))
  const entry = app.kernel.files.get(file)
  for (let round = 0; round < 4; round++) {
    const fill = round % 2 === 0 ? 0x55 : 0xaa
    await store(app, a, pid, src, new Uint8Array(pages * P).fill(fill))
    const write = app.inject({
      method: 'POST',
      url: `/v1/queues/${q.qid}/submit`,
      headers: a.headers,
      payload: Array.from({ length: 8 }, (_, i) => ({ opcode: 'MEMMOVE', src: `0x${(src + i * 8 * P).toString(16)}`, dst: `0x${(fa + i * 8 * P).toString(16)}`, size: 8 * P, tag: i }))
    })
    const sync = app.inject({ method: 'POST', url: `/v1/files/${file}/fsync`, headers: a.headers })
    const [w, s] = await Promise.all([write, sync])
    t.equal(s.statusCode, 200)
    t.ok(w.json().every((c: { status: string }) => c.status === 'SUCCESS'), `round ${round}: the device write completed`)
    // What the racing fsync wrote back: each page old or new, never a mix.
    let torn = 0
    for (let pg = 0; pg < pages; pg++) {
      const page = entry?.file.backing.get(pg)
      if (page === undefined || !(page.every(b => b === 0x55) || page.every(b => b === 0xaa))) torn++
    }
    t.equal(torn, 0, `round ${round}: no torn page written back`)
    t.equal((await app.inject({ method: 'POST', url: `/v1/files/${file}/fsync`, headers: a.headers })).statusCode, 200)
    const data = (await app.inject({ method: 'GET', url: `/v1/files/${file}/data`, headers: a.headers })).rawPayload
    t.equal(data.length, pages * P)
    t.ok(data.every(b => b === fill), `round ${round}: after the write and an fsync, the file holds the new data`)
    for (let pg = 0; pg < pages; pg++) {
      if (!(entry?.file.backing.get(pg)?.every(b => b === fill) ?? false)) t.fail(`round ${round}: page ${pg} written back whole and new`)
    }
  }
})

t.test('I4: many sync-only tenants share one hardware queue, each gets its own results', async t => {
  const devices = testDevices()
  devices[1].queues = [{ mode: 'kernel', depth: 16, priority: 1 }]
  const app = await build(t, {}, { devices })
  const tenants = await Promise.all(Array.from({ length: 10 }, async (_, i) => {
    const x = await createTenant(app)
    const pid = await createProcess(app, x)
    const q = await createQueue(app, x, 'wd1', { pid })
    const buf = Number(await mmap(app, x, pid, { length: 8 * P, prot: 'rw' }))
    const data = crypto.randomBytes(P + 7 * i)
    await store(app, x, pid, buf, data)
    return { x, pid, q, buf, data }
  }))
  const wd1 = (await app.inject({ method: 'GET', url: '/v1/devices/wd1', headers: tenants[0].x.headers })).json()
  t.equal(wd1.queues.length, 1)
  t.equal(wd1.queues[0].ports, 10, 'one hardware queue, ten tenants on it')
  // Each submits 24 descriptors at once: 240 through a 16-deep ring.
  const results = await Promise.all(tenants.map(async ({ x, q, buf, data }) => await app.inject({
    method: 'POST',
    url: `/v1/queues/${q.qid}/submit`,
    headers: x.headers,
    payload: Array.from({ length: 24 }, (_, j) => ({ opcode: 'SHA256', src: `0x${buf.toString(16)}`, dst: `0x${(buf + 4 * P + j * 32).toString(16)}`, size: data.length, tag: j }))
  })))
  for (const [i, { x, pid, buf, data }] of tenants.entries()) {
    const cs = results[i].json() as Array<{ status: string, tag: string }>
    t.ok(cs.length === 24 && cs.every((c, j) => c.status === 'SUCCESS' && c.tag === `0x${j.toString(16)}`), `tenant ${i}: every completion, in order`)
    const digest = crypto.createHash('sha256').update(data).digest()
    const out = await load(app, x, pid, buf + 4 * P, 24 * 32)
    let right = 0
    for (let j = 0; j < 24; j++) if (out.subarray(j * 32, j * 32 + 32).equals(digest)) right++
    t.equal(right, 24, `tenant ${i}: its own digests, of its own data`)
  }
  const after = (await app.inject({ method: 'GET', url: '/v1/devices/wd1', headers: tenants[0].x.headers })).json()
  t.equal(after.queues[0].counters.completed, 240)
  t.equal(after.queues[0].counters.retries, 0, 'the kernel waits for room: a mediated tenant never sees RETRY')
})

t.test('isolation on the mediated path: submissions wait while every kernel queue is isolated, and go on once an admin clears one', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd1', { pid })
  for (const index of [0, 1]) {
    const r = await app.inject({ method: 'POST', url: `/v1/admin/devices/wd1/queues/${index}/faults`, headers: adminHeaders, payload: { count: 65 } })
    t.equal(r.json().state, 'isolated')
  }
  t.equal((await app.inject({ method: 'GET', url: '/v1/devices/wd1', headers: a.headers })).json().isolate, 2)
  let answered = false
  const pending = app.inject({ method: 'POST', url: `/v1/queues/${q.qid}/submit`, headers: a.headers, payload: [{ opcode: 'NOOP', tag: '0x1' }] })
  pending.then(() => { answered = true })
  await new Promise(resolve => setTimeout(resolve, 120))
  t.notOk(answered, 'held by the kernel while no hardware queue runs')
  t.equal((await app.inject({ method: 'DELETE', url: '/v1/admin/devices/wd1/queues/1/isolation', headers: adminHeaders })).statusCode, 204)
  t.match((await pending).json(), [{ status: 'SUCCESS', tag: '0x1' }])
  t.equal((await app.inject({ method: 'GET', url: '/v1/devices/wd1', headers: a.headers })).json().isolate, 1)
})

t.test('a reset answers ABORTED to every tenant\'s work in flight, and nothing else is lost', async t => {
  const app = await build(t, { WARPD_PHYS_MEM_BYTES: 16 * 2 ** 20 })
  const n = 6
  const tenants = await Promise.all([0, 1, 2].map(async () => {
    const x = await createTenant(app)
    const pid = await createProcess(app, x)
    const q = await createQueue(app, x, 'wd1', { pid })
    const buf = Number(await mmap(app, x, pid, { length: 520 * P, prot: 'rw' }))
    // Incompressible data at level 9: each descriptor keeps the engine busy for a while.
    await store(app, x, pid, buf, crypto.randomBytes(256 * P))
    return { x, q, buf }
  }))
  const pending = tenants.map(async ({ x, q, buf }) => await app.inject({
    method: 'POST',
    url: `/v1/queues/${q.qid}/submit`,
    headers: { ...x.headers, 'content-type': OCTET },
    payload: encodeDescriptors(Array.from({ length: n }, (_, i) => ({ opcode: Opcode.DEFLATE, src: buf, dst: buf + 260 * P, size: 256 * P, dstSize: 260 * P, tag: BigInt(i), opArgs: new Uint8Array(16).fill(9, 0, 1) })))
  }))
  await until(() => tenants.every(({ q }) => (app.uacce.queues.get(q.qid)?.inflight ?? 0) > 0), 'every tenant has work in flight')
  const reset = await app.inject({ method: 'POST', url: '/v1/admin/devices/wd1/reset', headers: adminHeaders })
  const aborted = reset.json().aborted as number
  t.ok(aborted > 0, `${aborted} descriptors in flight at the reset`)
  let answeredAborted = 0
  for (const [i, r] of (await Promise.all(pending)).entries()) {
    const st = statuses(r.rawPayload)
    t.equal(st.length, n, `tenant ${i}: every descriptor answered`)
    t.ok(st.every(s => s === Status.SUCCESS || s === Status.ABORTED), `tenant ${i}: SUCCESS before the reset, ABORTED after`)
    answeredAborted += st.filter(s => s === Status.ABORTED).length
  }
  t.equal(answeredAborted, aborted, 'exactly what was in flight completed ABORTED')
  t.equal(app.kernel.meta.pincount.reduce((x, y) => x + y, 0), 0, 'every pin released')
  const again = await app.inject({ method: 'POST', url: `/v1/queues/${tenants[0].q.qid}/submit`, headers: tenants[0].x.headers, payload: [{ opcode: 'NOOP' }] })
  t.match(again.json(), [{ status: 'SUCCESS' }], 'the device runs again')
})

t.test('shutdown drains: a submission in flight when the app closes still completes SUCCESS', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const q = await createQueue(app, a, 'wd1', { pid })
  const sva = await createQueue(app, a, 'wd0', { pid })
  const buf = Number(await mmap(app, a, pid, { length: 260 * P, prot: 'rw' }))
  await store(app, a, pid, buf, crypto.randomBytes(256 * P))
  const descs = Array.from({ length: 8 }, (_, i) => ({ opcode: Opcode.SHA256, src: buf, dst: buf + 258 * P + i * 32, size: 256 * P, tag: BigInt(i) }))
  const mediated = app.inject({ method: 'POST', url: `/v1/queues/${q.qid}/submit`, headers: { ...a.headers, 'content-type': OCTET }, payload: encodeDescriptors(descs) })
  const direct = app.inject({ method: 'POST', url: `/v1/queues/${sva.qid}/submit`, headers: { ...a.headers, 'content-type': OCTET }, payload: encodeDescriptors(descs) })
  await until(() => (app.uacce.device('wd1')?.dev.outstanding ?? 0) > 0 && (app.uacce.device('wd0')?.dev.outstanding ?? 0) > 0, 'both devices have work')
  const proc = app.kernel.getProcess(pid)
  await app.close()
  for (const [name, pending] of [['sync_only', mediated], ['dedicated', direct]] as const) {
    const res = await pending
    t.equal(res.statusCode, 200, name)
    t.same(statuses(res.rawPayload), Array(8).fill(Status.SUCCESS), `${name}: drained, not aborted`)
  }
  t.ok(proc !== undefined && proc.state === 'exited', 'the processes exited after the drain')
  t.ok(app.uacce.device('wd0')?.dev.outstanding === 0 && app.uacce.device('wd1')?.dev.outstanding === 0, 'nothing left in the devices')
})
