/**
 * Property tests of the doorbell (PROTOCOL.md section 5) against the real server on
 * 127.0.0.1, over raw WebSocket frames: malformed frames must get PROTOCOL_ERROR and a
 * close and touch nothing else; well-formed SUBMIT, STORE and LOAD frames carrying
 * hostile descriptors, addresses and lengths must each be answered as the protocol
 * says (every accepted descriptor exactly one completion, LOAD_DATA only of the
 * tenant's own bytes, exact fault addresses), while a second tenant's doorbell, open
 * throughout, keeps working and its memory stays byte-for-byte unchanged.
 *
 * The bugs these properties found are kept at the end as shrunk reproductions, each of
 * which failed before its fix.
 */
import t from 'tap'
import crypto from 'node:crypto'
import fc from 'fast-check'
import WebSocket from 'ws'
import type { FastifyInstance } from 'fastify'
import { Doorbell, FRAME, Opcode, Status, Flag } from '../../src/client/index.ts'
import { CR_SIZE, DESC_SIZE } from '../../src/hw/descriptor.ts'
import { MAX_FRAME_BYTES } from '../../routes/doorbell.ts'
import {
  MEMBER_TAG, P, TWO_53, U64_MAX, addrArb, adjacentPages, bytesFrom, checkAgainstDescriptor, checkRecord, createBystander, createFuzzer,
  descRecipes, encode, fcParams, fuzzApp, hex, tally, withTimeout, type Bystander, type Fuzzer
} from '../fuzz-descriptors.ts'
import { build, createQueue, load, store } from '../helper.ts'

/** routes/doorbell.ts: ws's own cap, `maxPayload: MAX_FRAME_BYTES + 64 * 1024` */
const WS_MAX_PAYLOAD = MAX_FRAME_BYTES + 64 * 1024
/** routes/doorbell.ts: the longest LOAD a frame can answer */
const MAX_LOAD = MAX_FRAME_BYTES - 8 - 8

/**
 * Tag namespaces (bits 48-63): top-level descriptors of a run, batch members (MEMBER_TAG),
 * the end-of-run DRAIN. A top-level descriptor with COMPLETION_RECORD gets TOP_CR_TAG: its tag
 * lands in memory with its record, where a BATCH may later read it as a member's tag, so
 * in a run with a BATCH an extra completion with that tag may be a member's. A TOP_TAG
 * is never in memory: exactly one completion, always.
 */
const TOP_TAG = 0xD00Dn << 48n
const TOP_CR_TAG = 0xD0CCn << 48n
const SENTINEL_TAG = 0x5E17n << 48n

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

/** Waits (bounded) until `cond` holds. */
async function until (cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(1)
  }
}

// --- a raw doorbell: every frame the server sends, and how it closed ---

interface ServerFrame { type: number, value: number, body: Buffer, binary: boolean }

class RawChannel {
  readonly ws: WebSocket
  readonly frames: ServerFrame[] = []
  closeCode: number | undefined
  closeReason = ''
  error: Error | undefined

  constructor (url: string, token: string) {
    this.ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` } })
    this.ws.on('message', (data: Buffer, isBinary: boolean) => {
      this.frames.push({ type: data.length > 0 ? data[0] : -1, value: data.length >= 8 ? data.readUInt32LE(4) : -1, body: data.subarray(8), binary: isBinary })
      // the header's reserved bytes must be 0 in every server frame
      if (data.length < 8 || data[1] !== 0 || data[2] !== 0 || data[3] !== 0) this.frames[this.frames.length - 1].type = -2
    })
    this.ws.on('close', (code: number, reason: Buffer) => {
      this.closeCode = code
      this.closeReason = reason.toString()
    })
    this.ws.on('error', (e: Error) => { this.error = e })
  }

  get closed (): boolean { return this.closeCode !== undefined }

  static async open (base: string, qid: string, token: string): Promise<RawChannel> {
    const ch = new RawChannel(`${base.replace('http', 'ws')}/v1/queues/${qid}/doorbell`, token)
    await until(() => ch.frames.length > 0 || ch.closed || ch.error !== undefined, 'HELLO')
    if (ch.frames[0]?.type !== FRAME.HELLO) throw new Error(`no HELLO: ${String(ch.error ?? ch.closeCode)}`)
    return ch
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.ws.close(1000)
    await until(() => this.closed, 'the client close', 5000).catch(() => this.ws.terminate())
  }
}

function header (type: number, value: number, bodyLength: number): Buffer {
  const f = Buffer.alloc(8 + bodyLength)
  f[0] = type
  f.writeUInt32LE(value >>> 0, 4)
  return f
}

function loadFrame (id: number, addr: bigint, length: number): Buffer {
  const f = header(FRAME.LOAD, id, 12)
  f.writeBigUInt64LE(addr, 8)
  f.writeUInt32LE(length, 16)
  return f
}

function storeFrame (id: number, addr: bigint, data: Buffer): Buffer {
  const f = header(FRAME.STORE, id, 8 + data.length)
  f.writeBigUInt64LE(addr, 8)
  data.copy(f, 16)
  return f
}

function submitFrame (descs: Buffer[]): Buffer {
  const f = header(FRAME.SUBMIT, descs.length, descs.length * DESC_SIZE)
  descs.forEach((d, i) => d.copy(f, 8 + i * DESC_SIZE))
  return f
}

// --- what a LOAD or STORE may touch ---

/** The first byte of [addr, addr+len) outside `ranges` (sorted [start, end) pairs), or undefined. */
function firstOutside (addr: bigint, len: number, ranges: Array<[bigint, bigint]>): bigint | undefined {
  let cur = addr
  const end = addr + BigInt(len)
  while (cur < end) {
    const r = ranges.find(([s, e]) => cur >= s && cur < e)
    if (r === undefined) return cur
    cur = r[1]
  }
  return undefined
}

// --- the shared fixture: one app, tenant A (the fuzzer) and tenant B (the bystander) ---

interface Ctx extends Fuzzer, Bystander {
  app: FastifyInstance
  base: string
  aQid: string
  /** A's queue on the shared hardware queue, where B's is too */
  aSharedQid: string
  aPasid: number
  readable: Array<[bigint, bigint]>
  writable: Array<[bigint, bigint]>
  bPasid: number
  /** a 32-byte marker written all over B's memory: it must never show up in A's LOAD_DATA */
  marker: Buffer
  bdb: Doorbell
}

async function setup (): Promise<Ctx> {
  const app = await fuzzApp(t)
  const base = await app.listen({ port: 0, host: '127.0.0.1' })

  const fuzzer = await createFuzzer(app)
  const { a, aPid } = fuzzer
  const qa = await createQueue(app, a, 'wd0', { pid: aPid })
  const qas = await createQueue(app, a, 'wd0', { pid: aPid, kind: 'shared' })
  const maps = (await app.inject({ method: 'GET', url: `/v1/processes/${aPid}/mappings`, headers: a.headers })).json<{ mappings: Array<{ addr: string, end: string, prot: string }> }>().mappings
  const readable: Array<[bigint, bigint]> = []
  const writable: Array<[bigint, bigint]> = []
  for (const m of maps) {
    if (m.prot.includes('r')) readable.push([BigInt(m.addr), BigInt(m.end)])
    if (m.prot.includes('w')) writable.push([BigInt(m.addr), BigInt(m.end)])
  }

  const marker = crypto.randomBytes(32)
  const bystander = await createBystander(app, length => {
    const m = Buffer.alloc(length)
    for (let i = 0; i < length; i += 32) marker.copy(m, i)
    return m
  })
  // B shares a hardware queue with A's shared queue: the device must keep them apart by PASID alone
  const qb = await createQueue(app, bystander.b, 'wd0', { pid: bystander.bPid, kind: 'shared' })
  const bdb = await Doorbell.open(`${base.replace('http', 'ws')}/v1/queues/${qb.qid}/doorbell`, { token: bystander.b.token })
  t.teardown(async () => await bdb.close())
  return {
    ...fuzzer,
    ...bystander,
    app,
    base,
    aQid: qa.qid,
    aSharedQid: qas.qid,
    aPasid: qa.pasid ?? 0,
    readable,
    writable,
    bPasid: qb.pasid ?? 0,
    marker,
    bdb
  }
}

/** B's doorbell, open throughout, still hashes correctly (node:crypto), and B's memory is exactly B's own. */
async function checkBystander (c: Ctx): Promise<void> {
  const data = crypto.randomBytes(1 + crypto.randomInt(2 * P))
  await withTimeout(c.bdb.store(c.bBuf + 12 * P, data), 5000, 'B\'s STORE')
  const r = await withTimeout(c.bdb.submit({ opcode: Opcode.SHA256, src: c.bBuf + 12 * P, dst: c.bBuf + 14 * P, size: data.length }), 5000, 'B\'s SHA256')
  if (r.status !== Status.SUCCESS) throw new Error(`B's SHA256 completed ${r.status}`)
  const digest = crypto.createHash('sha256').update(data).digest()
  const got = await withTimeout(c.bdb.load(c.bBuf + 14 * P, 32), 5000, 'B\'s LOAD')
  if (!digest.equals(got)) throw new Error('B\'s SHA256 is wrong')
  data.copy(c.bModel, 12 * P)
  digest.copy(c.bModel, 14 * P)
  const mem = await load(c.app, c.b, c.bPid, c.bBuf, 16 * P)
  if (!mem.equals(c.bModel)) {
    const at = mem.findIndex((x, i) => x !== c.bModel[i])
    let n = 0
    for (let i = 0; i < mem.length; i++) if (mem[i] !== c.bModel[i]) n++
    throw new Error(`B's buffer changed: ${n} bytes, the first at offset ${at}: ${mem.subarray(at, at + 32).toString('hex')}`)
  }
  const secret = await load(c.app, c.b, c.bPid, c.bSecret, P)
  if (!secret.equals(c.secretModel)) throw new Error('B\'s secret page changed')
}

/** B hashes the same bytes `k` times at once on the hardware queue it shares with A's shared queue. */
async function bBurst (c: Ctx, k: number): Promise<void> {
  const data = crypto.randomBytes(1 + crypto.randomInt(P))
  await withTimeout(c.bdb.store(c.bBuf + 12 * P, data), 5000, 'B\'s STORE')
  data.copy(c.bModel, 12 * P)
  const rs = await withTimeout(c.bdb.submitAll(Array.from({ length: k }, (_, i) => ({ opcode: Opcode.SHA256, src: c.bBuf + 12 * P, dst: c.bBuf + 14 * P + 32 * i, size: data.length }))), 15000, 'B\'s burst')
  if (rs.some(r => r.status !== Status.SUCCESS)) throw new Error(`B's burst: ${rs.map(r => r.status).join(',')}`)
  const digest = crypto.createHash('sha256').update(data).digest()
  for (let i = 0; i < k; i++) digest.copy(c.bModel, 14 * P + 32 * i)
}

async function healthz (c: Ctx): Promise<void> {
  const res = await withTimeout(fetch(`${c.base}/healthz`), 5000, 'GET /healthz')
  if (res.status !== 200) throw new Error(`/healthz answered ${res.status}`)
  await res.arrayBuffer()
}

// --- arbitraries over the fixture's addresses ---

/** One hostile descriptor (tag and NOTIFY are set by the run). */
function descArb (c: Ctx): fc.Arbitrary<Buffer> {
  const { hostile, batch, clean } = descRecipes(c, [0, c.aPasid, c.bPasid])
  const random = fc.uint8Array({ minLength: 64, maxLength: 64 }).map(u => Buffer.from(u))
  return fc.oneof({ weight: 6, arbitrary: hostile.map(encode) }, { weight: 2, arbitrary: batch.map(encode) }, { weight: 3, arbitrary: clean.map(encode) }, { weight: 1, arbitrary: random })
}

/** A batch member written into memory for BATCH descriptors to read. */
function memberArb (c: Ctx): fc.Arbitrary<Buffer> {
  return fc.tuple(descArb(c), fc.bigInt({ min: 0n, max: (1n << 32n) - 1n }), fc.boolean()).map(([d, tag, notify]) => {
    d.writeBigUInt64LE(MEMBER_TAG | tag, 40)
    d[1] = notify ? d[1] | Flag.NOTIFY : d[1] & ~Flag.NOTIFY
    return d
  })
}

type Op =
  | { kind: 'submit', descs: Array<{ d: Buffer, notify: boolean }>, pad: number }
  | { kind: 'store', addr: bigint, data: Buffer }
  | { kind: 'load', addr: bigint, len: number }

/** STORE and LOAD addresses: the same as descriptors get, 2**53 and up included. */
function cpuAddr (c: Ctx): fc.Arbitrary<bigint> {
  return addrArb(c)
}

function opArb (c: Ctx): fc.Arbitrary<Op> {
  const submit = fc.record({
    descs: fc.array(fc.record({ d: descArb(c), notify: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }) }), { minLength: 1, maxLength: 12 }),
    // now and then enough NOOPs behind them to overflow the ring (128 dedicated, 256 shared): RETRY answers
    pad: fc.oneof({ weight: 6, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 100, max: 300 }) })
  }).map(s => ({ kind: 'submit' as const, ...s }))
  const storeRandom = fc.record({ addr: cpuAddr(c), seed: fc.integer(), len: fc.oneof(fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: 3 * P })) })
    .map(s => ({ kind: 'store' as const, addr: s.addr, data: bytesFrom(s.seed, s.len) }))
  const storeMembers = fc.record({ k: fc.integer({ min: 0, max: 63 }), members: fc.array(memberArb(c), { minLength: 1, maxLength: 8 }) })
    .map(s => ({ kind: 'store' as const, addr: BigInt(c.memberArea + 64 * s.k), data: Buffer.concat(s.members) }))
  const loadOp = fc.record({ addr: cpuAddr(c), len: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 0, max: 256 }) }, { weight: 2, arbitrary: fc.integer({ min: 0, max: 5 * P }) }, { weight: 1, arbitrary: fc.constant(MAX_LOAD) }) })
    .map(s => ({ kind: 'load' as const, ...s }))
  return fc.oneof({ weight: 4, arbitrary: submit }, { weight: 2, arbitrary: storeRandom }, { weight: 2, arbitrary: storeMembers }, { weight: 3, arbitrary: loadOp })
}

// --- the fixture ---

const ctx = await setup()
/** reported as a comment: statuses by name, LOAD and STORE outcomes */
const { count, summary } = tally()
const statusName = new Map<number, string>(Object.entries(Status).map(([k, v]) => [v, k]))
let runNo = 0
let nextRequest = 1

/** Problems found in a run, as messages; an empty list is a pass. */
type Problems = string[]

interface Sent { d: Buffer, tag: bigint, notify: boolean }

/** what a run may be answered with: no STATUS (nothing isolates or resets), no PROTOCOL_ERROR */
const RUN_FRAMES = new Set<number>([FRAME.COMPLETIONS, FRAME.LOAD_DATA, FRAME.STORE_FAULT])

/** Sends the ops of one run, then a DRAIN, and judges every answer. */
async function runOps (ch: RawChannel, ops: Op[]): Promise<Problems> {
  const run = ++runNo
  const problems: Problems = []
  const first = ch.frames.length
  const sent: Sent[] = []
  const loads = new Map<number, { addr: bigint, len: number }>()
  const stores = new Map<number, { addr: bigint, len: number }>()
  let batches = false
  for (const op of ops) {
    if (op.kind === 'submit') {
      const descs: Buffer[] = []
      const all = [...op.descs, ...Array.from({ length: op.pad }, () => ({ d: encode({ opcode: Opcode.NOOP, flags: 0, reserved: 0, pasid: 0, ca: 0n, src: 0n, dst: 0n, size: 0, dstSize: 0, opArgs: Buffer.alloc(16) }), notify: true }))]
      for (const { d: raw, notify } of all) {
        const d = Buffer.from(raw)
        d[1] = notify ? d[1] | Flag.NOTIFY : d[1] & ~Flag.NOTIFY
        const tag = ((d[1] & Flag.COMPLETION_RECORD) !== 0 ? TOP_CR_TAG : TOP_TAG) | (BigInt(run) << 16n) | BigInt(sent.length)
        d.writeBigUInt64LE(tag, 40)
        if (d[0] === Opcode.BATCH) batches = true
        sent.push({ d, tag, notify })
        descs.push(d)
      }
      ch.ws.send(submitFrame(descs))
    } else if (op.kind === 'store') {
      const id = nextRequest++
      stores.set(id, { addr: op.addr, len: op.data.length })
      ch.ws.send(storeFrame(id, op.addr, op.data))
    } else {
      const id = nextRequest++
      loads.set(id, { addr: op.addr, len: op.len })
      ch.ws.send(loadFrame(id, op.addr, op.len))
    }
  }
  const records = (): Buffer[] => {
    const out: Buffer[] = []
    for (let i = first; i < ch.frames.length; i++) {
      const f = ch.frames[i]
      if (f.type !== FRAME.COMPLETIONS) continue
      for (let k = 0; k < f.value && (k + 1) * CR_SIZE <= f.body.length; k++) out.push(f.body.subarray(k * CR_SIZE, (k + 1) * CR_SIZE))
    }
    return out
  }
  // The DRAIN completes once everything before it has: RETRY (a full ring) means send it again.
  for (let attempt = 0; ; attempt++) {
    if (attempt > 2000) throw new Error('the DRAIN was refused 2000 times')
    const tag = SENTINEL_TAG | (BigInt(run) << 16n) | BigInt(attempt)
    const drain = encode({ opcode: Opcode.DRAIN, flags: Flag.NOTIFY, reserved: 0, pasid: 0, ca: 0n, src: 0n, dst: 0n, size: 0, dstSize: 0, opArgs: Buffer.alloc(16) })
    drain.writeBigUInt64LE(tag, 40)
    ch.ws.send(submitFrame([drain]))
    let answer: Buffer | undefined
    await until(() => {
      answer = records().find(r => r.readBigUInt64LE(16) === tag)
      return answer !== undefined || ch.closed
    }, `the DRAIN of run ${run}`, 15000)
    if (ch.closed) {
      problems.push(`the channel closed: ${String(ch.closeCode)} ${ch.closeReason}`)
      return problems
    }
    if (answer?.[0] === Status.SUCCESS) break
    if (answer?.[0] !== Status.RETRY) {
      problems.push(`the DRAIN completed ${String(answer?.[0])}`)
      break
    }
    await sleep(2)
  }
  // Records that waited for a page request may follow the DRAIN's: wait for each NOTIFY one.
  const want = sent.filter(s => s.notify)
  await until(() => {
    const tags = new Set(records().map(r => r.readBigUInt64LE(16)))
    return want.every(s => tags.has(s.tag)) || ch.closed
  }, `the completions of run ${run}`, 10000).catch((e: Error) => problems.push(e.message))
  // One more round trip so anything sent twice has arrived too.
  const last = nextRequest++
  ch.ws.send(loadFrame(last, BigInt(ctx.buf), 0))
  await until(() => ch.frames.slice(first).some(f => f.type === FRAME.LOAD_DATA && f.value === last) || ch.closed, 'the last LOAD', 5000)

  // every accepted descriptor: exactly one completion; one not accepted: one RETRY/QUEUE_DISABLED
  const byTag = new Map<bigint, Buffer[]>()
  for (const r of records()) {
    const tag = r.readBigUInt64LE(16)
    byTag.set(tag, [...(byTag.get(tag) ?? []), r])
    const ns = tag >> 48n
    count(`${ns === TOP_TAG >> 48n || ns === TOP_CR_TAG >> 48n ? 'top' : ns === SENTINEL_TAG >> 48n ? 'drain' : 'member'}:${statusName.get(r[0]) ?? r[0]}`)
    // a full ring answers RETRY: the doorbell may refuse
    checkRecord(r, `record tag ${hex(tag)}`, problems, true)
  }
  for (const s of sent) {
    const got = byTag.get(s.tag) ?? []
    byTag.delete(s.tag)
    const where = `descriptor ${hex(s.tag)} (${s.d.toString('hex')})`
    if (batches && (s.tag >> 48n) === (TOP_CR_TAG >> 48n)) {
      // its tag may also be a batch member's (read from a record in memory): at least one
      if (got.length === 0 && s.notify) problems.push(`${where}: NOTIFY set, no completion`)
      continue
    }
    if (got.length > 1) problems.push(`${where}: ${got.length} completions`)
    else if (got.length === 0 && s.notify) problems.push(`${where}: NOTIFY set, no completion`)
    else if (got.length === 1 && !s.notify && got[0][0] !== Status.RETRY && got[0][0] !== Status.QUEUE_DISABLED) problems.push(`${where}: no NOTIFY, yet completion ${got[0][0]} was pushed`)
    if (got.length === 1) checkAgainstDescriptor(got[0], s.d, where, problems)
  }
  for (const [tag, recs] of byTag) {
    if ((tag >> 48n) === (SENTINEL_TAG >> 48n)) {
      if (recs.length > 1) problems.push(`DRAIN ${hex(tag)}: ${recs.length} completions`)
      continue
    }
    // batch members with NOTIFY set report on the channel, with whatever tag memory held
    if (!batches || (tag >> 48n) === (TOP_TAG >> 48n)) problems.push(`a completion nobody asked for: tag ${hex(tag)} status ${recs[0][0]}`)
  }

  const ownFrames = ch.frames.slice(first)
  for (const f of ownFrames) {
    if (!RUN_FRAMES.has(f.type) || !f.binary) problems.push(`unexpected frame type ${f.type}: ${f.body.subarray(0, 200).toString()}`)
    if (f.type === FRAME.COMPLETIONS && f.body.length !== f.value * CR_SIZE) problems.push(`COMPLETIONS of ${f.value} with a body of ${f.body.length}`)
  }
  for (const [id, l] of loads) {
    const answers = ownFrames.filter(f => f.type === FRAME.LOAD_DATA && f.value === id)
    const where = `LOAD ${id} of ${l.len} at ${hex(l.addr)}`
    if (answers.length !== 1) {
      problems.push(`${where}: ${answers.length} answers`)
      continue
    }
    const body = answers[0].body
    const bad = firstOutside(l.addr, l.len, ctx.readable)
    count(`load:${body[0] === Status.SUCCESS ? 'data' : 'fault'}`)
    if (body.subarray(1, 8).some(x => x !== 0)) problems.push(`${where}: reserved bytes set`)
    if (body[0] === Status.SUCCESS) {
      if (bad !== undefined) problems.push(`${where}: SUCCESS though ${hex(bad)} is not the tenant's`)
      if (body.length !== 8 + l.len) problems.push(`${where}: ${body.length - 8} bytes`)
      if (body.includes(ctx.marker)) problems.push(`${where}: the other tenant's bytes`)
    } else if (body[0] === Status.PAGE_FAULT) {
      const fa = body.length === 16 ? body.readBigUInt64LE(8) : -1n
      if (fa !== bad) problems.push(`${where}: PAGE_FAULT at ${hex(fa)}, the first byte not the tenant's is ${bad === undefined ? 'none' : hex(bad)}`)
    } else {
      problems.push(`${where}: status ${body[0]}`)
    }
  }
  for (const [id, s] of stores) {
    const answers = ownFrames.filter(f => f.type === FRAME.STORE_FAULT && f.value === id)
    const bad = firstOutside(s.addr, s.len, ctx.writable)
    const where = `STORE ${id} of ${s.len} at ${hex(s.addr)}`
    count(`store:${answers.length > 0 ? 'fault' : 'ok'}`)
    if (bad === undefined && answers.length > 0) problems.push(`${where}: STORE_FAULT on writable memory`)
    if (bad !== undefined && answers.length !== 1) problems.push(`${where}: ${answers.length} STORE_FAULTs, expected one at ${hex(bad)}`)
    if (bad !== undefined && answers.length === 1 && (answers[0].body.length !== 8 || answers[0].body.readBigUInt64LE(0) !== bad)) {
      problems.push(`${where}: STORE_FAULT at ${answers[0].body.toString('hex')}, expected ${hex(bad)}`)
    }
  }
  if (ch.closed) problems.push(`the channel closed: ${String(ch.closeCode)} ${ch.closeReason}`)
  return problems
}

// --- malformed frames ---

interface Malformed { what: string, parts: Array<Buffer | string>, codes: number[] }

const junkType = fc.integer({ min: 0, max: 255 }).filter(x => x !== FRAME.SUBMIT && x !== FRAME.STORE && x !== FRAME.LOAD)
const bodyOf = (max: number): fc.Arbitrary<Buffer> => fc.tuple(fc.integer(), fc.integer({ min: 0, max })).map(([seed, n]) => bytesFrom(seed, n))

const malformedArb: fc.Arbitrary<Malformed> = fc.oneof(
  fc.string({ maxLength: 40 }).map(s => ({ what: 'a text frame', parts: [s], codes: [1008] })),
  fc.constant<Malformed>({ what: 'an empty frame', parts: [Buffer.alloc(0)], codes: [1002] }),
  bodyOf(7).filter(b => b.length > 0).map(b => ({ what: `a ${b.length}-byte frame`, parts: [b], codes: [1002] })),
  fc.tuple(fc.constantFrom(FRAME.SUBMIT, FRAME.STORE, FRAME.LOAD, 0x55), fc.integer({ min: 1, max: 0xffffff }), fc.nat({ max: 0xffffffff }), bodyOf(200))
    .map(([type, reserved, value, body]) => {
      const f = Buffer.concat([header(type, value, 0), body])
      f.writeUIntLE(reserved, 1, 3)
      return { what: `type ${type} with reserved header bits ${reserved}`, parts: [f], codes: [1002] }
    }),
  fc.tuple(junkType, fc.nat({ max: 0xffffffff }), bodyOf(200))
    .map(([type, value, body]) => ({ what: `unknown type ${type}`, parts: [Buffer.concat([header(type, value, 0), body])], codes: [1002] })),
  bodyOf(300).map(body => ({ what: 'SUBMIT with a count of 0', parts: [Buffer.concat([header(FRAME.SUBMIT, 0, 0), body])], codes: [1002] })),
  fc.tuple(fc.integer({ min: 1, max: 0xffffffff }), fc.integer(), fc.integer({ min: 0, max: 40 }))
    .filter(([count, , n]) => count !== n)
    .map(([count, seed, n]) => ({ what: `SUBMIT of ${count} with ${n} descriptors`, parts: [Buffer.concat([header(FRAME.SUBMIT, count, 0), bytesFrom(seed, n * 64)])], codes: [1002] })),
  fc.tuple(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 63 }), fc.boolean(), fc.integer())
    .map(([count, cut, grow, seed]) => {
      const n = count * 64 + (grow ? cut : -cut)
      return { what: `SUBMIT of ${count} with a body of ${n} bytes`, parts: [Buffer.concat([header(FRAME.SUBMIT, count, 0), bytesFrom(seed, n)])], codes: [1002] }
    }),
  fc.tuple(fc.nat({ max: 0xffffffff }), bodyOf(7)).map(([id, body]) => ({ what: `STORE with a ${body.length}-byte body`, parts: [Buffer.concat([header(FRAME.STORE, id, 0), body])], codes: [1002] })),
  fc.tuple(fc.nat({ max: 0xffffffff }), bodyOf(40)).filter(([, b]) => b.length !== 12)
    .map(([id, body]) => ({ what: `LOAD with a ${body.length}-byte body`, parts: [Buffer.concat([header(FRAME.LOAD, id, 0), body])], codes: [1002] })),
  fc.tuple(fc.nat({ max: 0xffffffff }), fc.integer({ min: MAX_LOAD + 1, max: 0xffffffff }))
    .map(([id, len]) => ({ what: `LOAD of ${len} bytes`, parts: [loadFrame(id, BigInt(ctx.buf), len)], codes: [1002] })),
  fc.tuple(fc.constantFrom(FRAME.SUBMIT, FRAME.STORE, FRAME.LOAD, 0x42), fc.integer({ min: MAX_FRAME_BYTES + 1, max: WS_MAX_PAYLOAD }))
    .map(([type, size]) => {
      const f = Buffer.alloc(size)
      f[0] = type
      f.writeUInt32LE(Math.floor((size - 8) / 64), 4)
      return { what: `a frame of ${size} bytes`, parts: [f], codes: [1009] }
    })
).chain(m => {
  // the same frame split into fragments, which the server must reassemble first
  const f = m.parts[0]
  if (typeof f === 'string' || f.length < 2) return fc.constant(m)
  return fc.oneof(fc.constant(m), fc.integer({ min: 1, max: f.length - 1 }).map(cut => ({ ...m, what: `${m.what}, in two fragments`, parts: [f.subarray(0, cut), f.subarray(cut)] })))
})

/** Sends one malformed frame after a well-formed preamble; judges the answer and the close. */
async function malformedRun (m: Malformed, preamble: boolean): Promise<Problems> {
  const problems: Problems = []
  count(`malformed:${m.codes.join('/')}`)
  const ch = await RawChannel.open(ctx.base, ctx.aQid, ctx.a.token)
  const crAddr = ctx.buf + 15 * P + 32 * (runNo % 64)
  const tag = TOP_CR_TAG | (BigInt(++runNo) << 16n)
  const loadId = nextRequest++
  if (preamble) {
    await store(ctx.app, ctx.a, ctx.aPid, crAddr, Buffer.alloc(32))
    const noop = encode({ opcode: Opcode.NOOP, flags: Flag.COMPLETION_RECORD, reserved: 0, pasid: 0, ca: BigInt(crAddr), src: 0n, dst: 0n, size: 0, dstSize: 0, opArgs: Buffer.alloc(16) })
    noop.writeBigUInt64LE(tag, 40)
    ch.ws.send(submitFrame([noop]))
    ch.ws.send(loadFrame(loadId, BigInt(ctx.buf), 8))
  }
  m.parts.forEach((part, i) => {
    const fin = i === m.parts.length - 1
    ch.ws.send(part, { binary: typeof part !== 'string', fin })
  })
  await until(() => ch.closed, `the close after ${m.what}`, 5000).catch((e: Error) => problems.push(e.message))
  const errors = ch.frames.filter(f => f.type === FRAME.PROTOCOL_ERROR)
  const at = ch.frames.findIndex(f => f.type === FRAME.PROTOCOL_ERROR)
  if (errors.length !== 1) problems.push(`${errors.length} PROTOCOL_ERROR frames`)
  else {
    if (errors[0].value !== 0) problems.push(`PROTOCOL_ERROR with value ${errors[0].value}`)
    if (errors[0].body.length === 0) problems.push('PROTOCOL_ERROR without a reason')
    if (at !== ch.frames.length - 1) problems.push('frames after the PROTOCOL_ERROR')
  }
  if (preamble) {
    const ld = ch.frames.findIndex(f => f.type === FRAME.LOAD_DATA && f.value === loadId)
    if (ld < 0 || (at >= 0 && ld > at)) problems.push('the LOAD before the malformed frame was not answered first')
  }
  if (ch.frames.some(f => f.type === -2 || !f.binary)) problems.push('a server frame with reserved header bytes set, or text')
  if (!m.codes.includes(ch.closeCode ?? -1)) problems.push(`closed with ${String(ch.closeCode)} (${ch.closeReason}), expected ${m.codes.join(' or ')}`)
  if (!ch.closed) ch.ws.terminate()
  if (preamble) {
    // the channel is gone, the work it rang for is not: its record lands in memory
    let rec: Buffer = Buffer.alloc(32)
    for (let i = 0; i < 1000 && rec[0] === 0; i++) {
      rec = await load(ctx.app, ctx.a, ctx.aPid, crAddr, 32)
      if (rec[0] === 0) await sleep(2)
    }
    if (rec[0] !== Status.SUCCESS || rec.readBigUInt64LE(16) !== tag) problems.push(`the preamble's record: ${rec.toString('hex')}`)
  }
  return problems
}

t.test('malformed frames: PROTOCOL_ERROR, the right close code, nothing else touched', async t => {
  await fc.assert(fc.asyncProperty(malformedArb, fc.boolean(), async (m, preamble) => {
    const problems = await malformedRun(m, preamble)
    await checkBystander(ctx)
    await healthz(ctx)
    if (problems.length > 0) throw new Error(`${m.what}:\n  ${problems.join('\n  ')}`)
  }), fcParams(60, 20000))
  t.comment(summary())
  // the offender's doorbell opens again and works
  const ch = await RawChannel.open(ctx.base, ctx.aQid, ctx.a.token)
  t.same(await runOps(ch, [{ kind: 'submit', descs: [{ d: encode({ opcode: Opcode.NOOP, flags: 0, reserved: 0, pasid: 0, ca: 0n, src: 0n, dst: 0n, size: 0, dstSize: 0, opArgs: Buffer.alloc(16) }), notify: true }], pad: 0 }]), [])
  await ch.close()
  await checkBystander(ctx)
  t.pass('every malformed frame was answered PROTOCOL_ERROR and closed; B unharmed')
})

t.test('hostile SUBMIT, STORE and LOAD frames: one completion each, exact faults, nothing of B\'s', async t => {
  const channels = new Map<string, RawChannel>()
  t.teardown(async () => { for (const ch of channels.values()) await ch.close() })
  const queues = [ctx.aQid, ctx.aSharedQid]
  // B's burst runs alongside A's frames now and then: B's completions must never reach A's channel
  const burst = fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 40 }) })
  await fc.assert(fc.asyncProperty(fc.constantFrom(...queues), fc.array(opArb(ctx), { minLength: 1, maxLength: 6 }), burst, async (qid, ops, k) => {
    let ch = channels.get(qid)
    if (ch === undefined || ch.closed) {
      ch = await RawChannel.open(ctx.base, qid, ctx.a.token)
      channels.set(qid, ch)
    }
    count(qid === ctx.aQid ? 'queue:dedicated' : 'queue:shared')
    const [problems] = await Promise.all([runOps(ch, ops), k > 0 ? bBurst(ctx, k) : Promise.resolve()])
    await checkBystander(ctx)
    if (problems.length > 0) throw new Error(problems.slice(0, 20).join('\n'))
  }), fcParams(100, 25000))
  await healthz(ctx)
  t.comment(summary())
  t.equal(ctx.app.uacce.device('wd0')?.dev.outstanding, 0, 'nothing left outstanding on the device')
  t.pass('every hostile frame answered as the protocol says')
})

t.test('the descriptor of last session: addresses of 2**53 and up fault with their exact bytes', async t => {
  const ch = await RawChannel.open(ctx.base, ctx.aQid, ctx.a.token)
  t.teardown(async () => await ch.close())
  const descs = [TWO_53, TWO_53 + 1n, 1n << 63n, U64_MAX, U64_MAX - 31n].flatMap(w => [
    { d: encode({ opcode: Opcode.MEMMOVE, flags: 0, reserved: 0, pasid: 0, ca: 0n, src: w, dst: BigInt(ctx.buf), size: 8, dstSize: 0, opArgs: Buffer.alloc(16) }), notify: true },
    { d: encode({ opcode: Opcode.FILL, flags: Flag.BLOCK_ON_FAULT, reserved: 0, pasid: 0, ca: 0n, src: 0n, dst: w, size: 8, dstSize: 0, opArgs: Buffer.alloc(16) }), notify: true },
    { d: encode({ opcode: Opcode.NOOP, flags: Flag.COMPLETION_RECORD, reserved: 0, pasid: 0, ca: w & ~31n, src: 0n, dst: 0n, size: 0, dstSize: 0, opArgs: Buffer.alloc(16) }), notify: true },
    { d: encode({ opcode: Opcode.BATCH, flags: 0, reserved: 0, pasid: 0, ca: 0n, src: w, dst: 0n, size: 2, dstSize: 0, opArgs: Buffer.alloc(16) }), notify: true }
  ])
  t.same(await runOps(ch, [{ kind: 'submit', descs, pad: 0 }]), [])
  await checkBystander(ctx)
})

// --- regressions: bugs these properties found, since fixed in src/ ---

// Found by the hostile property: the device wrote the record of a descriptor that completed
// INVALID_FIELD for its misaligned completion_addr, translating only the record's first byte
// and writing 32 physically contiguous bytes, so a record in the last 31 bytes of a page
// spilled into the next physical frame, whoever owned it (fixed: recordAddr()).
t.test('a completion record at a misaligned address never reaches another tenant\'s memory', async t => {
  // a fresh app, so A's page and B's page are physically adjacent frames
  const app = await build(t)
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  const { a, aBuf, b, bPid, bBuf, qid } = await adjacentPages(t, app)
  const ch = await RawChannel.open(base, qid, a.token)
  // bytes 0-15 of the frame: 01 03 0000 00000000 | completion_addr = A's page + 4088 | ... tag 0x41 x 8
  const noop = encode({ opcode: Opcode.NOOP, flags: Flag.COMPLETION_RECORD | Flag.NOTIFY, reserved: 0, pasid: 0, ca: BigInt(aBuf + P - 8), src: 0n, dst: 0n, size: 0, dstSize: 0, opArgs: Buffer.alloc(16) })
  noop.writeBigUInt64LE(0x4141414141414141n, 40)
  ch.ws.send(submitFrame([noop]))
  await until(() => ch.frames.some(f => f.type === FRAME.COMPLETIONS), 'the completion')
  t.equal(ch.frames.find(f => f.type === FRAME.COMPLETIONS)?.body[0], Status.INVALID_FIELD, 'the misaligned completion_addr is INVALID_FIELD')
  await ch.close()
  t.same(await load(app, b, bPid, bBuf, 32), Buffer.alloc(32, 0xbb), 'B\'s page is untouched (it held 24 bytes of A\'s record, tag 0x41 x 8 at offset 8)')
})

// Found by the hostile property (a DRAIN that never completed): a FENCE entry waits in its
// lane until it is the queue's oldest, and when the entry ahead of it completed from the
// BLOCK_ON_FAULT path nothing ran the arbiter again, until some later doorbell write.
t.test('a FENCE behind a BLOCK_ON_FAULT descriptor that faults completes without another doorbell write', async t => {
  const ch = await RawChannel.open(ctx.base, ctx.aQid, ctx.a.token)
  const fill = encode({ opcode: Opcode.FILL, flags: Flag.NOTIFY | Flag.BLOCK_ON_FAULT, reserved: 0, pasid: 0, ca: 0n, src: 0n, dst: BigInt(ctx.ro), size: 8, dstSize: 0, opArgs: Buffer.alloc(16) })
  fill.writeBigUInt64LE(1n, 40)
  const fenced = encode({ opcode: Opcode.NOOP, flags: Flag.NOTIFY | Flag.FENCE, reserved: 0, pasid: 0, ca: 0n, src: 0n, dst: 0n, size: 0, dstSize: 0, opArgs: Buffer.alloc(16) })
  fenced.writeBigUInt64LE(2n, 40)
  // one frame: 01 000000 02000000, FILL NOTIFY|BLOCK_ON_FAULT into the read-only page, NOOP NOTIFY|FENCE
  ch.ws.send(submitFrame([fill, fenced]))
  const tags = (): bigint[] => ch.frames.filter(f => f.type === FRAME.COMPLETIONS).flatMap(f => Array.from({ length: f.value }, (_, i) => f.body.readBigUInt64LE(i * CR_SIZE + 16)))
  const done = await until(() => tags().includes(2n), 'the FENCE NOOP', 2000).then(() => true, () => false)
  t.same(tags().sort(), [1n, 2n], 'both completed (the FILL with PAGE_FAULT)')
  t.ok(done, 'with no other doorbell write')
  await ch.close()
})

// Found while writing the generators: a DRAIN completed only once it was its PASID's oldest
// outstanding entry, but a member always has its BATCH ahead of it, so neither completed and
// app.close() waited for them for ever.
t.test('a BATCH holding a DRAIN completes', async t => {
  const ch = await RawChannel.open(ctx.base, ctx.aQid, ctx.a.token)
  const drain = encode({ opcode: Opcode.DRAIN, flags: 0, reserved: 0, pasid: 0, ca: 0n, src: 0n, dst: 0n, size: 0, dstSize: 0, opArgs: Buffer.alloc(16) })
  ch.ws.send(storeFrame(1, BigInt(ctx.memberArea), drain))
  const batch = encode({ opcode: Opcode.BATCH, flags: Flag.NOTIFY, reserved: 0, pasid: 0, ca: 0n, src: BigInt(ctx.memberArea), dst: 0n, size: 1, dstSize: 0, opArgs: Buffer.alloc(16) })
  batch.writeBigUInt64LE(0xba7c4n, 40)
  ch.ws.send(submitFrame([batch]))
  const done = await until(() => ch.frames.some(f => f.type === FRAME.COMPLETIONS), 'the BATCH\'s completion', 2000).then(() => true, () => false)
  t.ok(done, 'the BATCH completed')
  t.equal(ch.frames.find(f => f.type === FRAME.COMPLETIONS)?.body[0], Status.SUCCESS)
  await ch.close()
})

// --- bugs these properties found, shrunk: each failed before its fix ---

t.test('a LOAD at 2**53 and up answers LOAD_DATA PAGE_FAULT with its exact address', async t => {
  for (const addr of [TWO_53 + 1n, U64_MAX]) {
    const ch = await RawChannel.open(ctx.base, ctx.aQid, ctx.a.token)
    ch.ws.send(loadFrame(7, addr, 4))
    await until(() => ch.frames.length > 1 || ch.closed, 'an answer', 5000)
    const f = ch.frames[1]
    t.equal(f?.type, FRAME.LOAD_DATA, `LOAD at ${hex(addr)} is answered LOAD_DATA${f?.type === FRAME.PROTOCOL_ERROR ? `, not PROTOCOL_ERROR "${f.body.toString()}"` : ''}`)
    t.equal(f?.body[0], Status.PAGE_FAULT)
    t.equal(f?.body.length === 16 ? hex(f.body.readBigUInt64LE(8)) : undefined, hex(addr), 'the exact faulting address')
    await ch.close()
  }
})

t.test('a STORE at 2**53 and up answers STORE_FAULT with its exact address', async t => {
  for (const addr of [TWO_53 + 1n, U64_MAX]) {
    const ch = await RawChannel.open(ctx.base, ctx.aQid, ctx.a.token)
    ch.ws.send(storeFrame(9, addr, Buffer.from('x')))
    ch.ws.send(loadFrame(10, BigInt(ctx.buf), 0))
    await until(() => ch.frames.some(f => f.type === FRAME.LOAD_DATA) || ch.closed, 'an answer', 5000)
    const f = ch.frames[1]
    t.equal(f?.type, FRAME.STORE_FAULT, `STORE at ${hex(addr)} is answered STORE_FAULT${f?.type === FRAME.PROTOCOL_ERROR ? `, not PROTOCOL_ERROR "${f.body.toString()}"` : ''}`)
    t.equal(f?.body.length === 8 ? hex(f.body.readBigUInt64LE(0)) : undefined, hex(addr), 'the exact faulting address')
    await ch.close()
  }
})

t.test('LOAD and STORE of 0 bytes at 2**53 and up touch nothing and succeed, as at any address', async t => {
  for (const addr of [TWO_53, U64_MAX]) {
    const ch = await RawChannel.open(ctx.base, ctx.aQid, ctx.a.token)
    ch.ws.send(storeFrame(11, addr, Buffer.alloc(0)))
    ch.ws.send(loadFrame(12, addr, 0))
    await until(() => ch.frames.some(f => f.type === FRAME.LOAD_DATA) || ch.closed, 'an answer', 5000)
    t.notOk(ch.frames.some(f => f.type === FRAME.STORE_FAULT), `no STORE_FAULT at ${hex(addr)}`)
    const f = ch.frames.find(f => f.type === FRAME.LOAD_DATA)
    t.equal(f?.body[0], Status.SUCCESS, `LOAD of 0 at ${hex(addr)} succeeds`)
    t.equal(f?.body.length, 8, 'with no bytes')
    await ch.close()
  }
})

t.test('a frame just above ws\'s maxPayload still gets PROTOCOL_ERROR before its 1009 close', async t => {
  const ch = await RawChannel.open(ctx.base, ctx.aQid, ctx.a.token)
  const f = Buffer.alloc(WS_MAX_PAYLOAD + 1)
  f[0] = FRAME.STORE
  ch.ws.send(f)
  await until(() => ch.closed, 'the close', 5000)
  t.equal(ch.closeCode, 1009)
  t.ok(ch.frames.some(x => x.type === FRAME.PROTOCOL_ERROR), 'a PROTOCOL_ERROR came first')
})

t.test('a FILL that faults on its destination reports the bytes it wrote before the faulting page', async t => {
  const ch = await RawChannel.open(ctx.base, ctx.aQid, ctx.a.token)
  // FILL, NOTIFY, dst = the last byte of A's buffer, size 2: one byte in the mapping, one past its end
  const fill = encode({ opcode: Opcode.FILL, flags: Flag.NOTIFY, reserved: 0, pasid: 0, ca: 0n, src: 0n, dst: BigInt(ctx.buf + 16 * P - 1), size: 2, dstSize: 0, opArgs: Buffer.alloc(16) })
  ch.ws.send(submitFrame([fill]))
  await until(() => ch.frames.some(f => f.type === FRAME.COMPLETIONS), 'the completion')
  const rec = ch.frames.find(f => f.type === FRAME.COMPLETIONS)?.body ?? Buffer.alloc(32)
  t.equal(rec[0], Status.PAGE_FAULT)
  t.equal(hex(rec.readBigUInt64LE(8)), hex(ctx.buf + 16 * P), 'at the end of the mapping')
  t.equal(rec.readUInt32LE(4), 1, 'bytes_completed 1: the byte in the mapping was filled')
  await ch.close()
})
