/**
 * Property tests of the mediated submit (PROTOCOL.md section 6, POST /v1/queues/{qid}/submit)
 * on a sync_only queue of the device without SVA and on a dedicated queue, through
 * inject(): octet-stream bodies of any length and bytes, hostile descriptors, JSON
 * arrays with wrong types, extra fields, huge, negative and fractional numbers and hex
 * strings beyond 64 bits. Every answer is 200 with exactly N completion records in
 * order, or a problem+json 4xx with a catalogued code; never a 5xx, never a hang. A
 * second tenant on the same kernel queues keeps its memory byte for byte, and the
 * server keeps serving (a SHA256 checked against node:crypto at the end).
 *
 * The bugs these properties found are kept at the end as shrunk reproductions, each of
 * which failed before its fix.
 */
import t from 'tap'
import crypto from 'node:crypto'
import fc from 'fast-check'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { CATALOGUE } from '../../src/errors.ts'
import { CR_SIZE, DESC_SIZE, Flag, Opcode, Status } from '../../src/hw/descriptor.ts'
import {
  MEMBER_TAG, P, TWO_53, U64_MAX, USED_OP_ARGS, adjacentPages, bytesFrom, checkAgainstDescriptor, checkRecord, createBystander, createFuzzer,
  descRecipes, encode, fcParams, fuzzApp, hex, tally, withTimeout, type Bystander, type Fields, type Fuzzer
} from '../fuzz-descriptors.ts'
import { build, createQueue, load, OCTET, store, type TestTenant } from '../helper.ts'

/** src/schemas/queues.ts MAX_SUBMIT_DESCRIPTORS */
const MAX_DESCRIPTORS = 4096
/** tenant A's in-flight quota, below MAX_DESCRIPTORS so both refusals are reachable */
const QUOTA = 2048
/** WARPD_MAX_BODY_BYTES, the default */
const BODY_LIMIT = 8 * 2 ** 20
const statusCode = new Map<string, number>(Object.entries(Status))
const flagNames = Object.keys(Flag) as Array<keyof typeof Flag>
const opcodeName = new Map<number, string>(Object.entries(Opcode).map(([k, v]) => [v, k]))
/** the kernel waits for room, and the queues run: no answer here is ever RETRY or QUEUE_DISABLED */
const REFUSABLE = false

// --- the fixture: one app, tenant A (the fuzzer) and tenant B (the bystander on the same kernel queues) ---

interface Ctx extends Fuzzer, Bystander {
  app: FastifyInstance
  qSync: string
  qDedicated: string
  aPasid: number
  qB: string
}

async function setup (): Promise<Ctx> {
  const app = await fuzzApp(t)
  const fuzzer = await createFuzzer(app, { inflight: QUOTA })
  const qSync = (await createQueue(app, fuzzer.a, 'wd1', { pid: fuzzer.aPid })).qid
  const qd = await createQueue(app, fuzzer.a, 'wd0', { pid: fuzzer.aPid })
  const bystander = await createBystander(app, length => crypto.randomBytes(length))
  const qB = (await createQueue(app, bystander.b, 'wd1', { pid: bystander.bPid })).qid
  return { ...fuzzer, ...bystander, app, qSync, qDedicated: qd.qid, aPasid: qd.pasid ?? 0, qB }
}

const ctx = await setup()
/** answers by status and code, completions by status */
const { count, summary } = tally()

async function submit (qid: string, payload: Buffer | string, contentType: string | undefined, tenant: TestTenant = ctx.a): Promise<LightMyRequestResponse> {
  const headers: Record<string, string> = { ...tenant.headers }
  if (contentType !== undefined) headers['content-type'] = contentType
  return await withTimeout(ctx.app.inject({ method: 'POST', url: `/v1/queues/${qid}/submit`, headers, payload }), 15000, `POST ${qid}/submit`)
}

/** B hashes its own bytes through the same kernel queues, checked against node:crypto. */
async function bHashes (): Promise<void> {
  const data = crypto.randomBytes(1 + crypto.randomInt(3 * P))
  await store(ctx.app, ctx.b, ctx.bPid, ctx.bBuf + 12 * P, data)
  data.copy(ctx.bModel, 12 * P)
  const d = encode({ opcode: Opcode.SHA256, flags: 0, reserved: 0, pasid: 0, ca: 0n, src: BigInt(ctx.bBuf + 12 * P), dst: BigInt(ctx.bBuf + 15 * P), size: data.length, dstSize: 0, tag: 0xb0b0n, opArgs: Buffer.alloc(16) })
  const res = await submit(ctx.qB, d, OCTET, ctx.b)
  if (res.statusCode !== 200 || res.rawPayload[0] !== Status.SUCCESS) throw new Error(`B's SHA256: ${res.statusCode} ${res.rawPayload.toString('hex')}`)
  const digest = crypto.createHash('sha256').update(data).digest()
  digest.copy(ctx.bModel, 15 * P)
}

/** B's memory is exactly what B wrote. */
async function bUnchanged (): Promise<void> {
  const mem = await load(ctx.app, ctx.b, ctx.bPid, ctx.bBuf, 16 * P)
  if (!mem.equals(ctx.bModel)) {
    const at = mem.findIndex((x, i) => x !== ctx.bModel[i])
    throw new Error(`B's buffer changed at offset ${at}: ${mem.subarray(at, at + 32).toString('hex')}`)
  }
  if (!(await load(ctx.app, ctx.b, ctx.bPid, ctx.bSecret, P)).equals(ctx.secretModel)) throw new Error('B\'s secret page changed')
}

// --- arbitraries ---

const tagArb = fc.oneof(fc.bigInt({ min: 0n, max: U64_MAX }), fc.constantFrom(0n, 1n, U64_MAX, TWO_53, TWO_53 - 1n))

/** One hostile descriptor, as fields. */
function fieldsArb (): fc.Arbitrary<Required<Fields>> {
  const { hostile, batch, clean } = descRecipes(ctx, [0, ctx.aPasid, ctx.aPasid + 1], tagArb)
  return fc.oneof({ weight: 6, arbitrary: hostile }, { weight: 2, arbitrary: batch }, { weight: 3, arbitrary: clean })
}

/** Batch members written into the tenant's memory for BATCH descriptors to read. */
const membersArb: fc.Arbitrary<{ k: number, bytes: Buffer }> = fc.record({
  k: fc.integer({ min: 0, max: 63 }),
  members: fc.array(fc.tuple(fieldsArb(), fc.bigInt({ min: 0n, max: (1n << 32n) - 1n })), { minLength: 1, maxLength: 8 })
}).map(({ k, members }) => ({
  k,
  bytes: Buffer.concat(members.map(([f, tag]) => {
    return encode({ ...f, tag: MEMBER_TAG | tag })
  }))
}))

type Body =
  | { kind: 'descriptors', descs: Array<Required<Fields>> }
  | { kind: 'bytes', bytes: Buffer, what: string }

const bodyArb: fc.Arbitrary<Body> = fc.oneof(
  { weight: 8, arbitrary: fc.array(fieldsArb(), { minLength: 1, maxLength: 16 }).map(descs => ({ kind: 'descriptors' as const, descs })) },
  { weight: 3, arbitrary: fc.tuple(fc.integer(), fc.integer({ min: 0, max: 400 })).map(([seed, n]) => ({ kind: 'bytes' as const, bytes: bytesFrom(seed, n), what: `${n} random bytes` })) },
  { weight: 1, arbitrary: fc.constant({ kind: 'bytes' as const, bytes: Buffer.alloc(0), what: 'an empty body' }) },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.integer(), fc.constantFrom(1, QUOTA, QUOTA + 1, MAX_DESCRIPTORS, MAX_DESCRIPTORS + 1))
      .map(([seed, n]) => ({ kind: 'bytes' as const, bytes: bytesFrom(seed, n * DESC_SIZE), what: `${n} random descriptors` }))
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom(BODY_LIMIT - 63, BODY_LIMIT + 1, BODY_LIMIT + 64)
      .map(n => ({ kind: 'bytes' as const, bytes: Buffer.alloc(n), what: `a body of ${n} bytes` }))
  }
)

// --- judging an answer ---

/** A 4xx problem+json with a catalogued code whose status it carries; `expect` pins the code. */
function checkProblem (res: LightMyRequestResponse, where: string, problems: string[], expect?: { status: number, code: string, field?: (f: string) => boolean }): void {
  if (res.statusCode >= 500) {
    problems.push(`${where}: ${res.statusCode} ${res.body.slice(0, 300)}`)
    return
  }
  if (!String(res.headers['content-type']).startsWith('application/problem+json')) {
    problems.push(`${where}: ${res.statusCode} as ${String(res.headers['content-type'])}`)
    return
  }
  const p = res.json<{ status: number, code: string, field?: string, detail: string }>()
  const entry = (CATALOGUE as Record<string, { status: number } | undefined>)[p.code]
  if (entry === undefined) problems.push(`${where}: code ${p.code} is not in the catalogue`)
  else if (entry.status !== res.statusCode || p.status !== res.statusCode) problems.push(`${where}: ${res.statusCode} with code ${p.code} (${entry.status}) and status ${p.status}`)
  if (expect !== undefined) {
    if (res.statusCode !== expect.status || p.code !== expect.code) problems.push(`${where}: ${res.statusCode} ${p.code} (${p.detail}), expected ${expect.status} ${expect.code}`)
    else if (expect.field !== undefined && (p.field === undefined || !expect.field(p.field))) problems.push(`${where}: the problem names field ${String(p.field)} (${p.detail})`)
  }
  count(`${res.statusCode}:${p.code}`)
}

/** A refusal is stable: the same request again gets the same status and code. */
async function checkStable (res: LightMyRequestResponse, again: () => Promise<LightMyRequestResponse>, where: string, problems: string[]): Promise<void> {
  if (res.statusCode < 400 || res.statusCode >= 500) return
  const second = await again()
  const code = (r: LightMyRequestResponse): string => String(r.json<{ code?: string }>().code)
  if (second.statusCode !== res.statusCode || code(second) !== code(res)) problems.push(`${where}: ${res.statusCode} ${code(res)}, then ${second.statusCode} ${code(second)}`)
}

/** What an octet-stream body of `length` bytes must be answered with, when it is refused. */
function octetRefusal (length: number): { status: number, code: string } | undefined {
  if (length > BODY_LIMIT) return { status: 413, code: 'WD_ERR_PAYLOAD_TOO_LARGE' }
  if (length === 0 || length % DESC_SIZE !== 0) return { status: 400, code: 'WD_ERR_VALIDATION' }
  const n = length / DESC_SIZE
  if (n > MAX_DESCRIPTORS) return { status: 413, code: 'WD_ERR_PAYLOAD_TOO_LARGE' }
  if (n > QUOTA) return { status: 409, code: 'WD_ERR_QUOTA' }
  return undefined
}

/** A 200: exactly N records, in order, each a completion the protocol allows for its descriptor. */
function checkRecords (out: Buffer, body: Buffer, where: string, problems: string[]): void {
  const n = body.length / DESC_SIZE
  if (out.length !== n * CR_SIZE) {
    problems.push(`${where}: ${out.length} bytes for ${n} descriptors`)
    return
  }
  for (let i = 0; i < n; i++) {
    const rec = out.subarray(i * CR_SIZE, (i + 1) * CR_SIZE)
    const d = body.subarray(i * DESC_SIZE, (i + 1) * DESC_SIZE)
    const w = `${where} #${i} (${d.toString('hex')})`
    checkRecord(rec, w, problems, REFUSABLE)
    checkAgainstDescriptor(rec, d, w, problems)
    count(`status:${[...statusCode].find(([, v]) => v === rec[0])?.[0] ?? rec[0]}`)
  }
}

function invariants (problems: string[]): void {
  if (ctx.app.inflight.get(ctx.a.id) !== 0) problems.push(`A has ${ctx.app.inflight.get(ctx.a.id)} descriptors counted in flight after its answer`)
}

t.test('octet-stream: N x 64 bytes of anything get N records in order, or a catalogued 4xx', async t => {
  const prop = fc.asyncProperty(
    fc.constantFrom<'sync' | 'dedicated'>('sync', 'dedicated'),
    bodyArb,
    fc.option(membersArb, { freq: 3 }),
    fc.boolean(),
    async (target, body, members, concurrently) => {
      const problems: string[] = []
      count(`queue:${target}`)
      if (members !== null) await store(ctx.app, ctx.a, ctx.aPid, ctx.memberArea + 64 * members.k, members.bytes)
      const bytes = body.kind === 'bytes' ? body.bytes : Buffer.concat(body.descs.map(encode))
      const what = body.kind === 'bytes' ? body.what : `${body.descs.length} descriptors`
      const qid = target === 'sync' ? ctx.qSync : ctx.qDedicated
      const [res] = await Promise.all([submit(qid, bytes, OCTET), concurrently ? bHashes() : Promise.resolve()])
      const refusal = octetRefusal(bytes.length)
      if (refusal !== undefined || res.statusCode !== 200) {
        checkProblem(res, what, problems, refusal ?? { status: 200, code: 'none' })
        await checkStable(res, async () => await submit(qid, bytes, OCTET), what, problems)
      } else {
        if (!String(res.headers['content-type']).startsWith('application/octet-stream')) problems.push(`${what}: a 200 as ${String(res.headers['content-type'])}`)
        checkRecords(res.rawPayload, bytes, what, problems)
      }
      invariants(problems)
      await bUnchanged()
      if (problems.length > 0) throw new Error(problems.slice(0, 20).join('\n'))
    })
  await fc.assert(prop, fcParams(100, 20000))
  await bHashes()
  await bUnchanged()
  t.comment(summary())
  t.pass('every octet-stream body answered as the protocol says')
})

// --- JSON ---

/** A JSON descriptor: the object sent, the bytes it stands for, and the fields made invalid. */
interface JsonDesc { obj: unknown, bytes: Buffer | undefined, bad: string[] }

const hexDigitsCase = (v: bigint, upper: boolean, pad: number): string => {
  const digits = v.toString(16).padStart(pad, '0')
  return `0x${upper ? digits.toUpperCase() : digits}`
}

/** a u64 as the JSON form allows: a hex string (any case, leading zeros up to 16 digits) or a safe integer */
function u64Json (v: bigint): fc.Arbitrary<string | number> {
  const digits = v.toString(16).length
  const asHex = fc.tuple(fc.boolean(), fc.integer({ min: digits, max: 16 })).map(([upper, pad]) => hexDigitsCase(v, upper, pad))
  return v < TWO_53 ? fc.oneof(asHex, fc.constant(Number(v))) : asHex
}

const badU64 = fc.constantFrom<unknown>('0x', `0x1${'0'.repeat(16)}`, `0x${'f'.repeat(17)}`, '-0x1', '0X10', '123', ' 0x1', '0x1 ', '0xg', '', 2 ** 53, 2 ** 64, -1, 1.5, 1e300, null, true, [], {}, '0x-1')
const badU32 = fc.constantFrom<unknown>(-1, 2 ** 32, 1.5, '16', '0x10', null, 1e300, true, [], -0.5)
const badOpcode = fc.constantFrom<unknown>('SHA257', 'noop', '', 'constructor', '__proto__', 'toString', -1, 256, 1.5, null, true, '0x05', [], {})
const badFlags = fc.constantFrom<unknown>(-1, 256, 2.5, ['FAST'], [1], 'NOTIFY', null, {}, ['NOTIFY', 'BOGUS'], ['constructor'], [null])
const badLevel = fc.constantFrom<unknown>(-1, 256, 1.5, '9', null)
const badOpArgs = fc.constantFrom<unknown>(`0x${'0'.repeat(31)}`, '0'.repeat(33), 'zz'.repeat(16), 5, null, '', `0x${'0'.repeat(30)}zz`)
const unknownField = fc.constantFrom('bogus', 'opArgs', 'Opcode', 'completionAddr', 'constructor', 'status', 'toString', 'hasOwnProperty')
const anyValue = fc.constantFrom<unknown>(1, 0, -1, 'x', '0x1', null, [], {}, true, { opcode: 'NOOP' })

const BAD_BY_FIELD: Record<string, fc.Arbitrary<unknown>> = {
  opcode: badOpcode,
  flags: badFlags,
  pasid: badU32,
  completion_addr: badU64,
  src: badU64,
  dst: badU64,
  size: badU32,
  dst_size: badU32,
  tag: badU64,
  op_args: badOpArgs,
  pattern: badU64,
  seed: badU32,
  level: badLevel,
  key_addr: badU64,
  iv_addr: badU64
}

/** Renders a descriptor as JSON the server must read as exactly its bytes, in one of the forms allowed. */
function renderJson (f: Required<Fields>): fc.Arbitrary<Record<string, unknown>> {
  const name = opcodeName.get(f.opcode)
  const opcode: fc.Arbitrary<unknown> = name === undefined ? fc.constant(f.opcode) : fc.constantFrom<unknown>(name, f.opcode)
  const flags: fc.Arbitrary<unknown> = (f.flags & 0xf0) !== 0
    ? fc.constant(f.flags)
    : fc.oneof(fc.constant<unknown>(f.flags), fc.constant(flagNames.filter(n => (f.flags & Flag[n]) !== 0)).chain(names => fc.shuffledSubarray(names, { minLength: names.length, maxLength: names.length })))
  const used = USED_OP_ARGS[f.opcode] ?? 0
  const named = f.opArgs.subarray(used).every(x => x === 0) && used > 0
  const opArgs: fc.Arbitrary<Record<string, unknown>> = f.opArgs.every(x => x === 0)
    ? fc.constantFrom<Record<string, unknown>>({}, { op_args: '0'.repeat(32) })
    : fc.oneof(
      fc.boolean().map(p => ({ op_args: `${p ? '0x' : ''}${f.opArgs.toString('hex')}` })),
      ...(named
        ? [f.opcode === Opcode.FILL
            ? u64Json(f.opArgs.readBigUInt64LE(0)).map(v => ({ pattern: v }))
            : f.opcode === Opcode.CRC32
              ? fc.constant({ seed: f.opArgs.readUInt32LE(0) })
              : f.opcode === Opcode.DEFLATE
                ? fc.constant({ level: f.opArgs[0] })
                : fc.tuple(u64Json(f.opArgs.readBigUInt64LE(0)), u64Json(f.opArgs.readBigUInt64LE(8))).map(([k, iv]) => ({ key_addr: k, iv_addr: iv }))]
        : [])
    )
  return fc.record({
    opcode,
    flags,
    pasid: fc.constant(f.pasid),
    completion_addr: u64Json(f.ca),
    src: u64Json(f.src),
    dst: u64Json(f.dst),
    size: fc.constant(f.size),
    dst_size: fc.constant(f.dstSize),
    tag: u64Json(f.tag),
    opArgs,
    // which fields to leave out when they are 0 (the default)
    omit: fc.boolean()
  }).map(r => {
    const o: Record<string, unknown> = { opcode: r.opcode }
    const put = (k: string, v: unknown, zero: boolean): void => { if (!(zero && r.omit)) o[k] = v }
    put('flags', r.flags, f.flags === 0)
    put('pasid', r.pasid, f.pasid === 0)
    put('completion_addr', r.completion_addr, f.ca === 0n)
    put('src', r.src, f.src === 0n)
    put('dst', r.dst, f.dst === 0n)
    put('size', r.size, f.size === 0)
    put('dst_size', r.dst_size, f.dstSize === 0)
    put('tag', r.tag, f.tag === 0n)
    Object.assign(o, r.opArgs)
    return o
  })
}

function jsonDescArb (target: 'sync' | 'dedicated'): fc.Arbitrary<JsonDesc> {
  // descriptors the JSON form can carry: reserved bytes are not a JSON field
  const valid = fieldsArb().map(f => ({ ...f, reserved: 0 })).chain(f => renderJson(f).map(obj => ({ obj, bytes: encode(f), bad: [] as string[] })))
  const corrupted = fc.tuple(valid, fc.array(fc.oneof(
    fc.constantFrom(...Object.keys(BAD_BY_FIELD)).chain(k => BAD_BY_FIELD[k].map(v => ({ k, v }))),
    fc.tuple(unknownField, anyValue).map(([k, v]) => ({ k, v }))
  ), { minLength: 1, maxLength: 2 })).map(([d, changes]) => {
    const obj = { ...(d.obj as Record<string, unknown>) }
    for (const { k, v } of changes) obj[k] = v
    return { obj, bytes: undefined, bad: changes.map(c => c.k) }
  })
  const missingOpcode = valid.map(d => {
    const { opcode: _gone, ...rest } = d.obj as Record<string, unknown>
    return { obj: rest, bytes: undefined, bad: ['opcode'] }
  })
  const notAnObject = fc.constantFrom<unknown>(17, 'NOOP', null, [], true, [{ opcode: 'NOOP' }]).map(obj => ({ obj, bytes: undefined, bad: [''] }))
  return fc.oneof({ weight: 8, arbitrary: valid }, { weight: 3, arbitrary: corrupted }, { weight: 1, arbitrary: missingOpcode }, { weight: 1, arbitrary: notAnObject })
}

type JsonBody =
  | { kind: 'array', descs: JsonDesc[] }
  | { kind: 'raw', text: string, what: string, expect?: { status: number, code: string } }

function jsonBodyArb (target: 'sync' | 'dedicated'): fc.Arbitrary<JsonBody> {
  return fc.oneof(
    { weight: 10, arbitrary: fc.array(jsonDescArb(target), { minLength: 1, maxLength: 8 }).map(descs => ({ kind: 'array' as const, descs })) },
    {
      weight: 2,
      arbitrary: fc.constantFrom<JsonBody>(
        { kind: 'raw', text: '[]', what: 'an empty array', expect: { status: 400, code: 'WD_ERR_VALIDATION' } },
        { kind: 'raw', text: 'null', what: 'null', expect: { status: 400, code: 'WD_ERR_VALIDATION' } },
        { kind: 'raw', text: '{"opcode":"NOOP"}', what: 'an object', expect: { status: 400, code: 'WD_ERR_VALIDATION' } },
        { kind: 'raw', text: '17', what: 'a number', expect: { status: 400, code: 'WD_ERR_VALIDATION' } },
        { kind: 'raw', text: '"[{}]"', what: 'a string', expect: { status: 400, code: 'WD_ERR_VALIDATION' } },
        { kind: 'raw', text: '', what: 'no body' },
        { kind: 'raw', text: '[', what: 'a truncated array' },
        { kind: 'raw', text: '[{"opcode":"NOOP"},]', what: 'a trailing comma' },
        { kind: 'raw', text: '[{"opcode":"NOOP","__proto__":{"x":1}}]', what: '__proto__' },
        { kind: 'raw', text: '[{"opcode":"NOOP","constructor":{"prototype":{"x":1}}}]', what: 'constructor.prototype' },
        { kind: 'raw', text: '[{"opcode":"NOOP","tag":0x10}]', what: 'a bare hex number' },
        { kind: 'raw', text: '[{"opcode":"NOOP","size":NaN}]', what: 'NaN' },
        { kind: 'raw', text: `[{"opcode":"NOOP","src":1${'0'.repeat(400)}}]`, what: 'a 401-digit number', expect: { status: 400, code: 'WD_ERR_VALIDATION' } },
        { kind: 'raw', text: `[${Array.from({ length: MAX_DESCRIPTORS + 1 }, () => '{"opcode":"NOOP"}').join(',')}]`, what: '4097 NOOPs', expect: { status: 413, code: 'WD_ERR_PAYLOAD_TOO_LARGE' } },
        { kind: 'raw', text: `[${Array.from({ length: QUOTA + 1 }, () => '{"opcode":"NOOP"}').join(',')}]`, what: '2049 NOOPs', expect: { status: 409, code: 'WD_ERR_QUOTA' } },
        { kind: 'raw', text: `[${Array.from({ length: QUOTA }, () => '{"opcode":"NOOP"}').join(',')},{"opcode":"NOOP","bogus":1}]`, what: '2048 NOOPs and a bad one', expect: { status: 400, code: 'WD_ERR_VALIDATION' } },
        { kind: 'raw', text: `[{"opcode":"NOOP","tag":"${' '.repeat(BODY_LIMIT)}"}]`, what: 'a body over the limit', expect: { status: 413, code: 'WD_ERR_PAYLOAD_TOO_LARGE' } }
      )
    },
    { weight: 1, arbitrary: fc.string({ maxLength: 60 }).map(text => ({ kind: 'raw' as const, text, what: `text ${JSON.stringify(text)}` })) }
  )
}

/** A JSON completion back as record bytes, after checking its shape. */
function recordFromJson (c: unknown, where: string, problems: string[]): Buffer | undefined {
  const o = c as Record<string, unknown>
  const keys = ['status', 'result', 'fault_info', 'bytes_completed', 'fault_addr', 'tag', 'value']
  if (typeof o !== 'object' || o === null || Object.keys(o).sort().join() !== [...keys].sort().join()) {
    problems.push(`${where}: completion ${JSON.stringify(c)}`)
    return undefined
  }
  const status = statusCode.get(String(o.status))
  const hex64 = /^0x[0-9a-f]{1,16}$/
  if (status === undefined || typeof o.result !== 'number' || typeof o.fault_info !== 'number' || typeof o.bytes_completed !== 'number' ||
    typeof o.value !== 'number' || typeof o.fault_addr !== 'string' || !hex64.test(o.fault_addr) || typeof o.tag !== 'string' || !hex64.test(o.tag)) {
    problems.push(`${where}: completion ${JSON.stringify(c)}`)
    return undefined
  }
  const rec = Buffer.alloc(CR_SIZE)
  rec[0] = status
  rec[1] = o.result
  rec[2] = o.fault_info
  rec.writeUInt32LE(o.bytes_completed, 4)
  rec.writeBigUInt64LE(BigInt(o.fault_addr), 8)
  rec.writeBigUInt64LE(BigInt(o.tag), 16)
  rec.writeBigUInt64LE(BigInt(o.value), 24)
  return rec
}

t.test('JSON: arrays of descriptors with wrong types, extra fields, huge and negative numbers', async t => {
  const prop = fc.asyncProperty(
    fc.constantFrom<'sync' | 'dedicated'>('sync', 'dedicated').chain(target => fc.tuple(fc.constant(target), jsonBodyArb(target))),
    fc.constantFrom('application/json', 'application/json; charset=utf-8'),
    fc.option(membersArb, { freq: 3 }),
    async ([target, body], contentType, members) => {
      const problems: string[] = []
      count(`queue:${target}`)
      if (members !== null) await store(ctx.app, ctx.a, ctx.aPid, ctx.memberArea + 64 * members.k, members.bytes)
      const qid = target === 'sync' ? ctx.qSync : ctx.qDedicated
      if (body.kind === 'raw') {
        const res = await submit(qid, body.text, contentType)
        if (res.statusCode === 200) problems.push(`${body.what}: 200`)
        else checkProblem(res, body.what, problems, body.expect)
        await checkStable(res, async () => await submit(qid, body.text, contentType), body.what, problems)
      } else {
        const text = JSON.stringify(body.descs.map(d => d.obj))
        const res = await submit(qid, text, contentType)
        const firstBad = body.descs.findIndex(d => d.bytes === undefined)
        const where = `${text.slice(0, 2000)}`
        if (firstBad >= 0) {
          const bad = body.descs[firstBad].bad
          checkProblem(res, where, problems, {
            status: 400,
            code: 'WD_ERR_VALIDATION',
            field: f => bad.some(k => f === (k === '' ? String(firstBad) : `${firstBad}.${k}`)) || f === String(firstBad)
          })
          await checkStable(res, async () => await submit(qid, text, contentType), where, problems)
        } else if (res.statusCode !== 200) {
          checkProblem(res, where, problems, { status: 200, code: 'none' })
        } else {
          const out = res.json<unknown[]>()
          if (!Array.isArray(out) || out.length !== body.descs.length) problems.push(`${where}: ${JSON.stringify(out).slice(0, 300)}`)
          else {
            out.forEach((c, i) => {
              const d = body.descs[i].bytes as Buffer
              const rec = recordFromJson(c, `${where} #${i}`, problems)
              if (rec === undefined) return
              checkRecord(rec, `#${i} (${d.toString('hex')})`, problems, REFUSABLE)
              checkAgainstDescriptor(rec, d, `#${i} (${d.toString('hex')})`, problems)
              count(`status:${String((c as { status: unknown }).status)}`)
            })
          }
        }
      }
      invariants(problems)
      await bUnchanged()
      if (problems.length > 0) throw new Error(problems.slice(0, 20).join('\n'))
    })
  await fc.assert(prop, fcParams(100, 20000))
  t.comment(summary())
  t.pass('every JSON body answered as the protocol says')
})

t.test('other content types and odd requests: a catalogued 4xx, never a 5xx', async t => {
  const prop = fc.asyncProperty(
    fc.constantFrom('text/plain', 'application/xml', 'application/x-www-form-urlencoded', 'multipart/form-data', '', 'application/octet-stream; charset=utf-8', 'application/json', 'APPLICATION/OCTET-STREAM'),
    fc.tuple(fc.integer(), fc.integer({ min: 0, max: 4 })).map(([seed, n]) => bytesFrom(seed, n * DESC_SIZE)),
    fc.constantFrom('sync', 'dedicated', 'q-999999', 'nope', 'q-1%00', 'B'),
    async (contentType, bytes, which) => {
      const problems: string[] = []
      const qid = which === 'sync' ? ctx.qSync : which === 'dedicated' ? ctx.qDedicated : which === 'B' ? ctx.qB : which
      const res = await submit(qid, bytes, contentType)
      if (res.statusCode === 200) {
        // only our own queue, bytes, and a content type that means octet-stream
        if (which === 'B' || which.startsWith('q-') || which === 'nope' || !contentType.toLowerCase().startsWith('application/octet-stream')) problems.push(`200 for ${which} as ${contentType}`)
        else checkRecords(res.rawPayload, bytes, `${bytes.length} bytes as ${contentType}`, problems)
      } else {
        checkProblem(res, `${bytes.length} bytes to ${which} as ${JSON.stringify(contentType)}`, problems)
        await checkStable(res, async () => await submit(qid, bytes, contentType), `${bytes.length} bytes to ${which}`, problems)
      }
      const octet = contentType.toLowerCase().startsWith('application/octet-stream')
      if ((which === 'B' || which === 'q-999999') && octet && res.statusCode !== 404) problems.push(`${which}: ${res.statusCode}, not 404`)
      invariants(problems)
      if (problems.length > 0) throw new Error(problems.join('\n'))
    })
  await fc.assert(prop, fcParams(40, 10000))
  t.comment(summary())
  await bUnchanged()
  t.pass('odd requests refused with catalogued codes')
})

t.test('concurrent submissions over the in-flight quota: 200 or 429 with Retry-After, and nothing stays counted', async t => {
  const request = fc.record({
    target: fc.constantFrom<'sync' | 'dedicated'>('sync', 'dedicated'),
    n: fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 300, max: 1200 })),
    sha: fc.boolean()
  })
  const prop = fc.asyncProperty(fc.array(request, { minLength: 2, maxLength: 6 }), async reqs => {
    const problems: string[] = []
    const bodies = reqs.map(r => Buffer.concat(Array.from({ length: r.n }, (_, i) => encode(r.sha
      ? { opcode: Opcode.SHA256, flags: 0, reserved: 0, pasid: 0, ca: 0n, src: BigInt(ctx.buf), dst: BigInt(ctx.buf + 12 * P + 32 * (i % 64)), size: 256, dstSize: 0, tag: BigInt(i), opArgs: Buffer.alloc(16) }
      : { opcode: Opcode.NOOP, flags: 0, reserved: 0, pasid: 0, ca: 0n, src: 0n, dst: 0n, size: 0, dstSize: 0, tag: BigInt(i), opArgs: Buffer.alloc(16) }))))
    const answers = await Promise.all(reqs.map(async (r, i) => await submit(r.target === 'sync' ? ctx.qSync : ctx.qDedicated, bodies[i], OCTET)))
    answers.forEach((res, i) => {
      const where = `request ${i} of ${reqs[i].n}`
      if (res.statusCode === 200) checkRecords(res.rawPayload, bodies[i], where, problems)
      else {
        checkProblem(res, where, problems, { status: 429, code: 'WD_ERR_INFLIGHT' })
        if (res.headers['retry-after'] !== '1') problems.push(`${where}: 429 with retry-after ${String(res.headers['retry-after'])}`)
      }
      if (res.statusCode === 200) count('200')
    })
    const total = reqs.reduce((sum, r) => sum + r.n, 0)
    if (total <= QUOTA && answers.some(r => r.statusCode !== 200)) problems.push(`${total} descriptors in all, within the quota, yet refused`)
    invariants(problems)
    if (problems.length > 0) throw new Error(problems.slice(0, 20).join('\n'))
  })
  await fc.assert(prop, fcParams(20, 15000))
  t.comment(summary())
  await bUnchanged()
  t.pass('the in-flight quota held under concurrency')
})

t.test('after the fuzz: nothing held, and a SHA256 through both queues matches node:crypto', async t => {
  t.equal(ctx.app.inflight.get(ctx.a.id), 0, 'A has nothing in flight')
  t.equal(ctx.app.kernel.meta.pincount.reduce((x, y) => x + y, 0), 0, 'no page left pinned')
  t.equal(ctx.app.uacce.device('wd1')?.domain?.mappedBytes, 0, 'nothing left mapped in the IOVA domain')
  t.equal(ctx.app.uacce.device('wd1')?.dev.outstanding, 0, 'nothing outstanding on wd1')
  t.equal(ctx.app.uacce.device('wd0')?.dev.outstanding, 0, 'nothing outstanding on wd0')
  const data = crypto.randomBytes(3 * P + 5)
  await store(ctx.app, ctx.a, ctx.aPid, ctx.buf + 3, data)
  const digest = crypto.createHash('sha256').update(data).digest()
  for (const qid of [ctx.qSync, ctx.qDedicated]) {
    await store(ctx.app, ctx.a, ctx.aPid, ctx.buf + 12 * P, Buffer.alloc(32))
    const d = encode({ opcode: Opcode.SHA256, flags: 0, reserved: 0, pasid: 0, ca: 0n, src: BigInt(ctx.buf + 3), dst: BigInt(ctx.buf + 12 * P), size: data.length, dstSize: 0, tag: 7n, opArgs: Buffer.alloc(16) })
    const res = await submit(qid, d, OCTET)
    t.equal(res.statusCode, 200)
    t.equal(res.rawPayload[0], Status.SUCCESS, `${qid}: octet-stream SHA256`)
    t.same(await load(ctx.app, ctx.a, ctx.aPid, ctx.buf + 12 * P, 32), digest, `${qid}: the digest is node:crypto's`)
    const json = await submit(qid, JSON.stringify([{ opcode: 'SHA256', src: hex(ctx.buf + 3), dst: hex(ctx.buf + 13 * P), size: data.length, tag: '0xfeedfacecafebeef' }]), 'application/json')
    t.match(json.json(), [{ status: 'SUCCESS', tag: '0xfeedfacecafebeef', bytes_completed: data.length }], `${qid}: JSON SHA256`)
    t.same(await load(ctx.app, ctx.a, ctx.aPid, ctx.buf + 13 * P, 32), digest)
  }
  await bHashes()
  await bUnchanged()
  const health = await ctx.app.inject({ method: 'GET', url: '/healthz' })
  t.equal(health.statusCode, 200, '/healthz')
})

// --- regressions: bugs these properties found, since fixed in src/hw/accel-device.ts (a
// DRAIN inside a BATCH never completed; a FENCE behind faulting BLOCK_ON_FAULT work was
// never started; a misaligned completion record spilled into the next physical frame) ---

t.test('a BATCH holding a DRAIN is answered (sync_only)', async t => {
  await store(ctx.app, ctx.a, ctx.aPid, ctx.memberArea, encode({ opcode: Opcode.DRAIN, flags: 0, reserved: 0, pasid: 0, ca: 0n, src: 0n, dst: 0n, size: 0, dstSize: 0, tag: 0n, opArgs: Buffer.alloc(16) }))
  const pending = submit(ctx.qSync, JSON.stringify([{ opcode: 'BATCH', src: hex(ctx.memberArea), size: 1 }]), 'application/json')
  const answered = await Promise.race([pending.then(() => true), new Promise<boolean>(resolve => setTimeout(() => resolve(false), 2000))])
  t.ok(answered, 'answered within 2 s')
  if (answered) t.match((await pending).json(), [{ status: 'SUCCESS' }])
})

t.test('dedicated: a FENCE behind a BLOCK_ON_FAULT descriptor that faults is answered', async t => {
  // FILL flags BLOCK_ON_FAULT into the read-only page, then NOOP flags FENCE
  const body = Buffer.concat([
    encode({ opcode: Opcode.FILL, flags: Flag.BLOCK_ON_FAULT, reserved: 0, pasid: 0, ca: 0n, src: 0n, dst: BigInt(ctx.ro), size: 8, dstSize: 0, tag: 1n, opArgs: Buffer.alloc(16) }),
    encode({ opcode: Opcode.NOOP, flags: Flag.FENCE, reserved: 0, pasid: 0, ca: 0n, src: 0n, dst: 0n, size: 0, dstSize: 0, tag: 2n, opArgs: Buffer.alloc(16) })
  ])
  const pending = submit(ctx.qDedicated, body, OCTET)
  const answered = await Promise.race([pending.then(() => true), new Promise<boolean>(resolve => setTimeout(() => resolve(false), 2000))])
  t.ok(answered, 'answered within 2 s')
  if (answered) {
    const out = (await pending).rawPayload
    t.same([out[0], out[CR_SIZE]], [Status.PAGE_FAULT, Status.SUCCESS])
  }
})

t.test('dedicated: a misaligned completion record never reaches another tenant\'s memory', async t => {
  // a fresh app, so A's page and B's page are physically adjacent frames
  const app = await build(t)
  const { a, aBuf, b, bPid, bBuf, qid } = await adjacentPages(t, app)
  const res = await app.inject({
    method: 'POST',
    url: `/v1/queues/${qid}/submit`,
    headers: a.headers,
    payload: [{ opcode: 'NOOP', flags: ['COMPLETION_RECORD'], completion_addr: hex(aBuf + P - 8), tag: '0x4141414141414141' }]
  })
  t.match(res.json(), [{ status: 'INVALID_FIELD' }])
  t.same(await load(app, b, bPid, bBuf, 32), Buffer.alloc(32, 0xbb), 'B\'s page is untouched')
})

// --- bugs these properties found, shrunk: each failed before its fix ---

t.test('sync_only: a BATCH whose array is at 2**53 or more completes PAGE_FAULT', async t => {
  const res = await submit(ctx.qSync, JSON.stringify([{ opcode: 'BATCH', src: '0xffffffffffffffc0', size: 1 }]), 'application/json')
  t.equal(res.statusCode, 200, `answered ${res.statusCode} ${res.body.slice(0, 120)}`)
  t.match(res.statusCode === 200 ? res.json() : undefined, [{ status: 'PAGE_FAULT', fault_addr: '0xffffffffffffffc0' }])
})

t.test('sync_only: a BATCH member with a completion record at 2**53 or more is answered', async t => {
  // one member: NOOP, flags COMPLETION_RECORD, completion_addr 0xffffffffffffffe0
  const member = encode({ opcode: Opcode.NOOP, flags: Flag.COMPLETION_RECORD, reserved: 0, pasid: 0, ca: U64_MAX - 31n, src: 0n, dst: 0n, size: 0, dstSize: 0, tag: 5n, opArgs: Buffer.alloc(16) })
  await store(ctx.app, ctx.a, ctx.aPid, ctx.memberArea, member)
  const res = await submit(ctx.qSync, JSON.stringify([{ opcode: 'BATCH', src: hex(ctx.memberArea), size: 1 }]), 'application/json')
  t.equal(res.statusCode, 200, `answered ${res.statusCode} ${res.body.slice(0, 120)}`)
})
