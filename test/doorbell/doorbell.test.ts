/**
 * The doorbell over real sockets on 127.0.0.1 (PROTOCOL.md section 5), driven by the SDK.
 */
import t from 'tap'
import crypto from 'node:crypto'
import net from 'node:net'
import WebSocket from 'ws'
import type { FastifyInstance } from 'fastify'
import { WarpClient, Doorbell, Opcode, Status, Flag, FRAME } from '../../src/client/index.ts'
import { ADDR_UNREPRESENTABLE, CR_SIZE, readCompletion } from '../../src/hw/descriptor.ts'
import { build, adminHeaders } from '../helper.ts'

const P = 4096

interface Setup {
  app: FastifyInstance
  base: string
  admin: WarpClient
}

async function start (t: { teardown: (fn: () => unknown) => void }): Promise<Setup> {
  const app = await build(t, { WARPD_PHYS_MEM_BYTES: 64 * 2 ** 20 })
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, base: address, admin: new WarpClient(address, adminHeaders.authorization.slice(7)) }
}

async function tenant (s: Setup, kind: 'dedicated' | 'shared' = 'dedicated'): Promise<{ c: WarpClient, pid: number, qid: string, buf: number, token: string }> {
  const created = await s.admin.createTenant(`t-${crypto.randomBytes(4).toString('hex')}`)
  const c = new WarpClient(s.base, created.token)
  const { pid } = await c.createProcess()
  const m = await c.mmap(pid, { length: 64 * P, prot: 'rw' })
  const buf = Number(m.addr)
  await c.store(pid, buf, new Uint8Array(64 * P))
  const q = await c.createQueue('wd0', pid, kind)
  return { c, pid, qid: q.qid, buf, token: created.token }
}

/** Opens a raw socket and answers the close code and the PROTOCOL_ERROR reason after sending `frame`. */
async function rawClose (base: string, qid: string, token: string, frame: Buffer | string): Promise<{ code: number, reason: string }> {
  const ws = new WebSocket(`${base.replace('http', 'ws')}/v1/queues/${qid}/doorbell`, { headers: { authorization: `Bearer ${token}` } })
  let reason = ''
  return await new Promise((resolve, reject) => {
    ws.on('error', reject)
    ws.on('message', (data: Buffer) => {
      if (data[0] === FRAME.HELLO) ws.send(frame)
      else if (data[0] === FRAME.PROTOCOL_ERROR) reason = data.subarray(8).toString()
    })
    ws.on('close', (code) => resolve({ code, reason }))
  })
}

t.test('HELLO, SUBMIT, STORE and LOAD: a SHA256 straight to the hardware queue', async t => {
  const s = await start(t)
  const a = await tenant(s)
  const db = await a.c.doorbell(a.qid)
  t.teardown(() => db.close())
  t.match(db.hello, { queue: a.qid, device: 'wd0', depth: 128, maxFrameBytes: Number })
  t.ok((db.hello?.pasid ?? 0) > 0)
  const data = crypto.randomBytes(3 * P + 7)
  await db.store(a.buf + 5, data)
  const done = await db.submit({ opcode: Opcode.SHA256, src: a.buf + 5, dst: a.buf + 10 * P, size: data.length })
  t.equal(done.status, Status.SUCCESS)
  t.same(await db.load(a.buf + 10 * P, 32), crypto.createHash('sha256').update(data).digest())
  const many = await db.submitAll(Array.from({ length: 100 }, () => ({ opcode: Opcode.NOOP })))
  t.ok(many.every(c => c.status === Status.SUCCESS), '100 NOOPs in one frame')
  const fault = await db.load(0x1000, 8).catch(e => e)
  t.match(fault, { code: 'PAGE_FAULT', addr: 0x1000 })
  const ro = Number((await a.c.mmap(a.pid, { length: P, prot: 'r' })).addr)
  const sf = await db.store(ro, new Uint8Array([1])).catch(e => e)
  t.match(sf, { code: 'STORE_FAULT', addr: ro })
})

t.test('malformed frames: PROTOCOL_ERROR and a close; the server and other tenants carry on', async t => {
  const s = await start(t)
  const a = await tenant(s)
  const other = await tenant(s)
  const odb = await other.c.doorbell(other.qid)
  t.teardown(() => odb.close())
  const hdr = (type: number, value: number, body = 0, reserved = 0): Buffer => {
    const b = Buffer.alloc(8 + body)
    b[0] = type
    b[1] = reserved
    b.writeUInt32LE(value, 4)
    return b
  }
  const cases: Array<[string, Buffer | string, number]> = [
    ['a body that is not whole descriptors', hdr(FRAME.SUBMIT, 1, 63), 1002],
    ['a count that disagrees with the body', hdr(FRAME.SUBMIT, 2, 64), 1002],
    ['a zero count', hdr(FRAME.SUBMIT, 0, 0), 1002],
    ['an unknown type', hdr(0x55, 0), 1002],
    ['reserved header bits set', hdr(FRAME.SUBMIT, 1, 64, 1), 1002],
    ['a short header', Buffer.from([1, 0, 0]), 1002],
    ['a LOAD with a bad body', hdr(FRAME.LOAD, 1, 4), 1002],
    ['a text frame', 'hello', 1008],
    ['an oversized frame', hdr(FRAME.STORE, 1, 1024 * 1024 + 16), 1009]
  ]
  for (const [what, frame, code] of cases) {
    const r = await rawClose(s.base, a.qid, a.token, frame)
    t.equal(r.code, code, `${what}: closed with ${code}`)
    t.not(r.reason, '', `${what}: ${r.reason}`)
  }
  const ok = await odb.submit({ opcode: Opcode.NOOP })
  t.equal(ok.status, Status.SUCCESS, 'another tenant\'s doorbell still works')
  const again = await a.c.doorbell(a.qid)
  t.equal((await again.submit({ opcode: Opcode.NOOP })).status, Status.SUCCESS, 'and the offender can reopen')
  await again.close()
})

t.test('isolation between tenants: another\'s address faults, forged PASIDs change nothing', async t => {
  const s = await start(t)
  const a = await tenant(s)
  const b = await tenant(s)
  const secret = Number((await b.c.mmap(b.pid, { length: P, prot: 'rw', addr: '0x66660000' })).addr)
  await b.c.store(b.pid, secret, Buffer.from('the other tenant\'s secret'))
  const db = await a.c.doorbell(a.qid)
  t.teardown(() => db.close())
  const bdb = await b.c.doorbell(b.qid)
  const bPasid = bdb.hello?.pasid
  await bdb.close()
  const r = await db.submit({ opcode: Opcode.MEMMOVE, pasid: bPasid, src: secret, dst: a.buf, size: 24 })
  t.equal(r.status, Status.PAGE_FAULT)
  t.equal(r.faultAddr, secret)
  t.same(await db.load(a.buf, 24), Buffer.alloc(24), 'no byte of it arrived')
  // an address no number holds (2**53 and up) faults with its exact bytes, and the
  // server carries on (it once threw writing the record, from the device's pump)
  const wide = (1n << 62n) + 3n
  const w = await db.submit({ opcode: Opcode.MEMMOVE, src: ADDR_UNREPRESENTABLE, wide: { src: wide }, dst: a.buf, size: 24 })
  t.equal(w.status, Status.PAGE_FAULT)
  t.equal(w.faultAddr, wide)
  t.equal((await db.submit({ opcode: Opcode.NOOP })).status, Status.SUCCESS, 'the channel still works')
  t.same(await b.c.load(b.pid, secret, 5), Buffer.from('the o'), 'and so does the server')
})

t.test('one channel per queue; sync_only queues have none; only the owner maps it; fork gives none', async t => {
  const s = await start(t)
  const a = await tenant(s)
  const db = await a.c.doorbell(a.qid)
  const second = await a.c.doorbell(a.qid).catch(e => e)
  t.match(second, { code: 'HTTP_409' }, 'EEXIST while mapped')
  const b = await tenant(s)
  const cross = await b.c.doorbell(a.qid).catch(e => e)
  t.match(cross, { code: 'HTTP_404' }, 'another tenant\'s queue does not exist for it')
  // fork while the parent's doorbell is busy: hashes in flight, then the fork
  await a.c.store(a.pid, a.buf + 32 * P, Buffer.alloc(16 * P, 1))
  const busy = db.submitAll(Array.from({ length: 64 }, () => ({ opcode: Opcode.SHA256, flags: Flag.BLOCK_ON_FAULT, src: a.buf, dst: a.buf + 8 * P, size: 16 * P })))
  const child = await a.c.fork(a.pid)
  const childOpen = await a.c.doorbell(a.qid, { pid: child.pid }).catch(e => e)
  t.match(childOpen, { code: 'HTTP_403' }, 'the child cannot map its parent\'s doorbell')
  // the parent's device writes after the fork, through its now copy-on-write pages
  const fill = await db.submit({ opcode: Opcode.FILL, flags: Flag.BLOCK_ON_FAULT, dst: a.buf + 32 * P, size: 16 * P, opArgs: new Uint8Array(16).fill(9, 0, 8) })
  t.equal(fill.status, Status.SUCCESS)
  t.ok((await busy).every(r => r.status === Status.SUCCESS), 'the work in flight across the fork completed')
  t.ok((await a.c.load(a.pid, a.buf + 32 * P, 16 * P)).every(x => x === 9), 'the device wrote the parent')
  t.ok((await a.c.load(child.pid, a.buf + 32 * P, 16 * P)).every(x => x === 1), 'the child sees memory as at fork')
  const sync = await a.c.createQueue('wd1', a.pid)
  const none = await a.c.doorbell(sync.qid).catch(e => e)
  t.match(none, { code: 'HTTP_422' }, 'a sync_only queue has no doorbell')
  await db.close()
})

/** An upgrade request over a bare TCP socket that keeps it open: answers the status line and whether the server closed it. */
async function refusedUpgrade (base: string, qid: string, token: string): Promise<{ status: string, closedByServer: boolean }> {
  const { hostname, port } = new URL(base)
  const sock = net.connect(Number(port), hostname)
  let got = ''
  sock.on('data', d => { got += d.toString('latin1') })
  sock.on('error', () => {})
  const closed = new Promise<boolean>(resolve => {
    sock.once('close', () => resolve(true))
    // bounded: a server that leaves it open answers false
    setTimeout(() => resolve(false), 5000).unref()
  })
  sock.write(`GET /v1/queues/${qid}/doorbell HTTP/1.1\r\nHost: ${hostname}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
    `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nAuthorization: Bearer ${token}\r\n\r\n`)
  const closedByServer = await closed
  sock.destroy()
  return { status: got.split('\r\n')[0], closedByServer }
}

t.test('a refused upgrade is answered and its socket closed, so it cannot hold the shutdown', async t => {
  const s = await start(t)
  const a = await tenant(s)
  const bad = await refusedUpgrade(s.base, a.qid, 'not-a-token')
  t.equal(bad.status, 'HTTP/1.1 401 Unauthorized')
  t.ok(bad.closedByServer, 'the server closed the socket of the 401')
  const db = await a.c.doorbell(a.qid)
  const busy = await refusedUpgrade(s.base, a.qid, a.token)
  t.equal(busy.status, 'HTTP/1.1 409 Conflict')
  t.ok(busy.closedByServer, 'the server closed the socket of the 409')
  // the open channel is untouched by its refused neighbour
  const r = await db.submit({ opcode: Opcode.NOOP })
  t.equal(r.status, Status.SUCCESS)
  await db.close()
})

t.test('closing the channel leaves the work running: records land in memory, the doorbell reopens', async t => {
  const s = await start(t)
  const a = await tenant(s)
  const db = await a.c.doorbell(a.qid)
  const big = 48 * P
  await db.store(a.buf, crypto.randomBytes(big))
  const frame = Buffer.alloc(8 + 64 * 16)
  frame[0] = FRAME.SUBMIT
  frame.writeUInt32LE(16, 4)
  for (let i = 0; i < 16; i++) {
    const d = 8 + i * 64
    frame[d] = Opcode.SHA256
    frame[d + 1] = Flag.COMPLETION_RECORD
    frame.writeBigUInt64LE(BigInt(a.buf + 60 * P + i * 32), d + 8)
    frame.writeBigUInt64LE(BigInt(a.buf), d + 16)
    frame.writeBigUInt64LE(BigInt(a.buf + 56 * P + i * 32), d + 24)
    frame.writeUInt32LE(big, d + 32)
    frame.writeBigUInt64LE(BigInt(i + 1), d + 40)
  }
  db.sendRaw(frame)
  await db.close()
  const deadline = Date.now() + 10000
  let records: ReturnType<typeof readCompletion>[] = []
  while (Date.now() < deadline) {
    const mem = await a.c.load(a.pid, a.buf + 60 * P, 16 * CR_SIZE)
    records = Array.from({ length: 16 }, (_, i) => readCompletion(mem, i * CR_SIZE))
    if (records.every(r => r.status !== 0)) break
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  t.ok(records.every(r => r.status === Status.SUCCESS), 'all 16 completed after the close, records in memory')
  t.same(records.map(r => r.tag), Array.from({ length: 16 }, (_, i) => BigInt(i + 1)))
  const again = await a.c.doorbell(a.qid)
  t.equal((await again.submit({ opcode: Opcode.NOOP })).status, Status.SUCCESS)
  await again.close()
})

t.test('a shared queue under 16 tenants: RETRY when full, never lost, each its own results', async t => {
  const s = await start(t)
  const tenants = await Promise.all(Array.from({ length: 16 }, async () => await tenant(s, 'shared')))
  const dbs = await Promise.all(tenants.map(async x => await Doorbell.open(`${s.base.replace('http', 'ws')}/v1/queues/${x.qid}/doorbell`, { token: x.token, noRetry: true })))
  t.teardown(async () => { for (const d of dbs) await d.close() })
  const results = await Promise.all(dbs.map(async (db, i) => {
    const x = tenants[i]
    await db.store(x.buf, Buffer.alloc(P, i))
    return await db.submitAll(Array.from({ length: 64 }, (_, j) => ({ opcode: Opcode.SHA256, src: x.buf, dst: x.buf + 8 * P + j * 32, size: P })))
  }))
  const all = results.flat()
  const retries = all.filter(r => r.status === Status.RETRY).length
  t.ok(retries > 0, `${retries} RETRY answers: the 256-deep shared ring filled`)
  t.equal(all.filter(r => r.status !== Status.RETRY && r.status !== Status.SUCCESS).length, 0)
  for (const [i, db] of dbs.entries()) {
    const ok = results[i].findIndex(r => r.status === Status.SUCCESS)
    if (ok >= 0) t.same(await db.load(tenants[i].buf + 8 * P + ok * 32, 32), crypto.createHash('sha256').update(Buffer.alloc(P, i)).digest())
  }
  // With the SDK's retry, everything gets through.
  const x = tenants[0]
  const retrying = await Doorbell.open(`${s.base.replace('http', 'ws')}/v1/queues/${x.qid}/doorbell`, { token: x.token }).catch(e => e)
  t.match(retrying, { code: 'HTTP_409' }, 'its first doorbell is still open')
  await dbs[0].close()
  const db0 = await Doorbell.open(`${s.base.replace('http', 'ws')}/v1/queues/${x.qid}/doorbell`, { token: x.token })
  const rs = await db0.submitAll(Array.from({ length: 1000 }, () => ({ opcode: Opcode.NOOP })))
  t.ok(rs.every(r => r.status === Status.SUCCESS), '1000 through a 256-deep ring with retry')
  await db0.close()
})

t.test('releasing the queue: STATUS released, then the channel closes', async t => {
  const s = await start(t)
  const a = await tenant(s)
  const db = await a.c.doorbell(a.qid)
  const states: number[] = []
  db.onStatus = (state) => states.push(state)
  const closed = new Promise<number>(resolve => db.ws.once('close', (code) => resolve(code)))
  await a.c.releaseQueue(a.qid)
  t.equal(await closed, 1000)
  t.same(states, [4])
})

t.test('a device reset: STATUS resetting then running, ABORTED for what was caught, the channel carries on', async t => {
  const s = await start(t)
  const a = await tenant(s)
  const db = await a.c.doorbell(a.qid)
  t.teardown(() => db.close())
  const states: number[] = []
  db.onStatus = (state) => states.push(state)
  // about 120 MiB of hashing: far more than the engines finish before the reset lands
  const big = Number((await a.c.mmap(a.pid, { length: 256 * P, prot: 'rw' })).addr)
  await a.c.store(a.pid, big, crypto.randomBytes(256 * P))
  const n = 120
  const work = db.submitAll(Array.from({ length: n }, (_, i) => ({ opcode: Opcode.SHA256, src: big, dst: a.buf + i * 32, size: 256 * P })))
  // the frame crosses the loopback first: reset once the queue holds it
  const hw = s.app.uacce.queues.get(a.qid)?.hw
  const until = Date.now() + 5000
  while ((hw?.occupancy ?? 0) === 0 && Date.now() < until) await new Promise(resolve => setImmediate(resolve))
  const reset = await s.app.inject({ method: 'POST', url: '/v1/admin/devices/wd0/reset', headers: adminHeaders })
  t.equal(reset.statusCode, 200)
  t.ok(reset.json<{ aborted: number }>().aborted > 0, 'the reset found work in flight')
  const done = await work
  t.equal(done.length, n, 'one completion for each descriptor')
  t.ok(done.every(c => c.status === Status.SUCCESS || c.status === Status.ABORTED), 'SUCCESS or ABORTED, nothing else')
  t.ok(done.some(c => c.status === Status.ABORTED), 'what the reset caught completed ABORTED')
  t.same(states, [3, 1], 'STATUS resetting, then running')
  // the same channel goes on: new work runs, right
  const data = crypto.randomBytes(P + 11)
  await db.store(a.buf + 40 * P, data)
  t.equal((await db.submit({ opcode: Opcode.SHA256, src: a.buf + 40 * P, dst: a.buf + 50 * P, size: data.length })).status, Status.SUCCESS)
  t.same(await db.load(a.buf + 50 * P, 32), crypto.createHash('sha256').update(data).digest())
})

t.test('shutdown drains, then closes with 1001', async t => {
  const s = await start(t)
  const a = await tenant(s)
  const db = await a.c.doorbell(a.qid)
  await db.store(a.buf, crypto.randomBytes(32 * P))
  const pending = db.submitAll(Array.from({ length: 32 }, (_, i) => ({ opcode: Opcode.SHA256, src: a.buf, dst: a.buf + 40 * P + i * 32, size: 32 * P })))
  const closed = new Promise<number>(resolve => db.ws.once('close', (code) => resolve(code)))
  await new Promise(resolve => setTimeout(resolve, 5))
  const closing = s.app.close()
  const rs = await pending
  t.ok(rs.every(r => r.status === Status.SUCCESS), 'every descriptor in flight completed before the close')
  t.equal(await closed, 1001)
  await closing
})

t.test('a client that does not read: the server stops reading it, its buffers stay bounded', async t => {
  const s = await start(t)
  const a = await tenant(s)
  const ws = new WebSocket(`${s.base.replace('http', 'ws')}/v1/queues/${a.qid}/doorbell`, { headers: { authorization: `Bearer ${a.token}` } })
  await new Promise<void>((resolve, reject) => {
    ws.once('error', reject)
    ws.once('message', () => resolve())
  })
  // Stop reading on the client side, then keep sending big LOADs and NOTIFY submissions.
  ;(ws as unknown as { _socket: { pause: () => void } })._socket.pause()
  const load = Buffer.alloc(20)
  load[0] = FRAME.LOAD
  load.writeBigUInt64LE(BigInt(a.buf), 8)
  load.writeUInt32LE(64 * P, 16)
  const sub = Buffer.alloc(8 + 64 * 32)
  sub[0] = FRAME.SUBMIT
  sub.writeUInt32LE(32, 4)
  for (let i = 0; i < 32; i++) {
    sub[8 + i * 64] = Opcode.NOOP
    sub[8 + i * 64 + 1] = Flag.NOTIFY
  }
  const q = s.app.uacce.queues.get(a.qid)
  const channel = q?.doorbell as { ws: WebSocket } | undefined
  t.ok(channel !== undefined)
  let maxBuffered = 0
  for (let i = 0; i < 400; i++) {
    ws.send(load)
    ws.send(sub)
    if (i % 20 === 0) await new Promise(resolve => setTimeout(resolve, 5))
    maxBuffered = Math.max(maxBuffered, channel?.ws.bufferedAmount ?? 0)
  }
  await new Promise(resolve => setTimeout(resolve, 200))
  maxBuffered = Math.max(maxBuffered, channel?.ws.bufferedAmount ?? 0)
  t.ok(channel?.ws.isPaused, 'the server stopped reading the client')
  // 400 loads of 256 KiB would be 100 MiB; the high mark plus what was in flight is far less
  t.ok(maxBuffered < 16 * 2 ** 20, `server-side buffering stayed bounded (${maxBuffered} bytes)`)
  ws.terminate()
})

t.test('the browser form: the token as a subprotocol, only warpdrive.v1 selected', async t => {
  const s = await start(t)
  const a = await tenant(s)
  const url = `${s.base.replace('http', 'ws')}/v1/queues/${a.qid}/doorbell`
  const ws = new WebSocket(url, ['warpdrive.v1', `bearer.${a.token}`])
  const hello = await new Promise<Buffer>((resolve, reject) => {
    ws.once('error', reject)
    ws.once('message', (d: Buffer) => resolve(d))
  })
  t.equal(hello[0], FRAME.HELLO)
  t.equal(ws.protocol, 'warpdrive.v1', 'the token is never echoed as the selected protocol')
  await new Promise<void>(resolve => {
    ws.once('close', () => resolve())
    ws.close()
  })
})
