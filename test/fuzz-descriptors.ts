/**
 * What the two route-level property tests share (test/doorbell/doorbell-fuzz.test.ts and
 * test/routes/submit-fuzz.test.ts): hostile descriptors by field, what PROTOCOL.md lets a
 * completion record say about one, and their fixture of tenant A (the fuzzer) and tenant B
 * (the bystander, whose memory must never change). One copy, so the two judge the device
 * by the same rules.
 */
import fc from 'fast-check'
import type { FastifyInstance } from 'fastify'
import type { Test } from 'tap'
import { DESC_SIZE, Opcode, Status } from '../src/hw/descriptor.ts'
import { adminHeaders, build, createProcess, createQueue, createTenant, mmap, store, testDevices, type TestTenant } from './helper.ts'

export const P = 4096
export const U64_MAX = (1n << 64n) - 1n
export const TWO_53 = 1n << 53n
export const MAX_TRANSFER = 2 ** 20
export const MAX_BATCH = 256
export const STATUSES = new Set<number>(Object.values(Status))
export const OPCODES = new Set<number>(Object.values(Opcode))
/** op_args bytes each opcode uses (PROTOCOL.md section 3); the others must be 0 */
export const USED_OP_ARGS: Record<number, number> = { [Opcode.FILL]: 8, [Opcode.CRC32]: 4, [Opcode.DEFLATE]: 1, [Opcode.ENCRYPT]: 16, [Opcode.DECRYPT]: 16 }
export const SIZED = new Set<number>([Opcode.MEMMOVE, Opcode.FILL, Opcode.COMPARE, Opcode.CRC32, Opcode.SHA256, Opcode.DEFLATE, Opcode.INFLATE, Opcode.ENCRYPT, Opcode.DECRYPT])
export const STREAMING = new Set<number>([Opcode.MEMMOVE, Opcode.COMPARE, Opcode.CRC32])
export const MEMBER_TAG = 0xBEEFn << 48n

/**
 * fast-check's parameters: WARPD_FUZZ_SEED (and WARPD_FUZZ_PATH) replay a reported failure,
 * without shrinking.
 */
export function fcParams (numRuns: number, ms: number): fc.Parameters<unknown> {
  const seed = process.env.WARPD_FUZZ_SEED
  if (seed === undefined) return { numRuns, interruptAfterTimeLimit: ms, markInterruptAsFailure: false }
  return { numRuns, seed: Number(seed), path: process.env.WARPD_FUZZ_PATH, endOnFailure: true, verbose: 1 }
}

export async function withTimeout<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  })
  try {
    return await Promise.race([p, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** Deterministic bytes from a seed (xorshift32), so a failing case replays exactly. */
export function bytesFrom (seed: number, length: number): Buffer {
  const b = Buffer.alloc(length)
  let x = (seed | 0) || 0x9e3779b9
  for (let i = 0; i < length; i++) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    b[i] = x & 0xff
  }
  return b
}

export function hex (v: bigint | number): string {
  return `0x${v.toString(16)}`
}

/** Counts of what a property reached, so its comment shows the generators got where they aim. */
export function tally (): { count: (what: string) => void, summary: () => string } {
  const seen = new Map<string, number>()
  return {
    count: what => { seen.set(what, (seen.get(what) ?? 0) + 1) },
    summary: () => {
      const s = [...seen].sort(([x], [y]) => x < y ? -1 : 1).map(([k, v]) => `${k}=${v}`).join(' ')
      // each property reports only its own
      seen.clear()
      return s
    }
  }
}

// --- descriptors, by field ---

/** A descriptor's fields. No tag means 0: the doorbell's runs write their own tags over it. */
export interface Fields {
  opcode: number
  flags: number
  reserved: number
  pasid: number
  ca: bigint
  src: bigint
  dst: bigint
  size: number
  dstSize: number
  tag?: bigint
  opArgs: Buffer
}

export function encode (f: Fields): Buffer {
  const b = Buffer.alloc(DESC_SIZE)
  b[0] = f.opcode
  b[1] = f.flags
  b.writeUInt16LE(f.reserved, 2)
  b.writeUInt32LE(f.pasid >>> 0, 4)
  b.writeBigUInt64LE(f.ca, 8)
  b.writeBigUInt64LE(f.src, 16)
  b.writeBigUInt64LE(f.dst, 24)
  b.writeUInt32LE(f.size >>> 0, 32)
  b.writeUInt32LE(f.dstSize >>> 0, 36)
  b.writeBigUInt64LE(f.tag ?? 0n, 40)
  f.opArgs.copy(b, 48, 0, 16)
  return b
}

/** PROTOCOL.md sections 1, 3 and 4: true when the descriptor must complete INVALID_OPCODE or INVALID_FIELD. */
export function specInvalid (d: Buffer): boolean {
  const op = d[0]
  if (!OPCODES.has(op)) return true
  if ((d[1] & 0xf0) !== 0) return true
  if (d[2] !== 0 || d[3] !== 0) return true
  if (d[8] % 32 !== 0) return true
  const size = d.readUInt32LE(32)
  if (op === Opcode.BATCH && (size < 1 || size > MAX_BATCH)) return true
  if (SIZED.has(op) && (size < 1 || size > MAX_TRANSFER)) return true
  for (let i = 48 + (USED_OP_ARGS[op] ?? 0); i < 64; i++) if (d[i] !== 0) return true
  if (op === Opcode.DEFLATE && d[48] > 9) return true
  return false
}

/** The byte ranges a descriptor names; a PAGE_FAULT's fault_addr must fall in one of them (never an IOVA). */
export function namedRanges (d: Buffer): Array<[bigint, bigint]> {
  const op = d[0]
  const size = BigInt(d.readUInt32LE(32))
  const dstSize = BigInt(d.readUInt32LE(36))
  const src = d.readBigUInt64LE(16)
  const dst = d.readBigUInt64LE(24)
  const out: Array<[bigint, bigint]> = []
  if (op === Opcode.BATCH) return [[src, src + size * 64n]]
  if (op === Opcode.ENCRYPT || op === Opcode.DECRYPT) {
    const key = d.readBigUInt64LE(48)
    const iv = d.readBigUInt64LE(56)
    out.push([key, key + 32n], [iv, iv + 12n])
  }
  if (SIZED.has(op) && op !== Opcode.FILL) out.push([src, src + size])
  if (SIZED.has(op) && op !== Opcode.CRC32) {
    let len = size > dstSize ? size : dstSize
    if (len < 32n) len = 32n
    out.push([dst, dst + len])
  }
  return out
}

// --- judging a completion ---

function isRefusal (status: number): boolean {
  return status === Status.RETRY || status === Status.QUEUE_DISABLED
}

/**
 * A completion record on its own (PROTOCOL.md section 2). `refusable`: whether the path may
 * answer RETRY or QUEUE_DISABLED at all. A doorbell may (a full ring), and such an answer
 * carries the tag and nothing else; the mediated submit may not, for the kernel waits for
 * room and the queues run.
 */
export function checkRecord (rec: Buffer, where: string, problems: string[], refusable: boolean): void {
  const status = rec[0]
  if (!STATUSES.has(status)) problems.push(`${where}: status ${status} is not a protocol status`)
  if (isRefusal(status) && !refusable) problems.push(`${where}: ${status} on a running queue`)
  if (rec[3] !== 0) problems.push(`${where}: reserved byte 3 is ${rec[3]}`)
  if (rec[2] > 3) problems.push(`${where}: fault_info ${rec[2]} has unknown bits`)
  if (status !== Status.PAGE_FAULT && (rec.readBigUInt64LE(8) !== 0n || rec[2] !== 0)) problems.push(`${where}: status ${status} with fault_addr ${hex(rec.readBigUInt64LE(8))} fault_info ${rec[2]}`)
  if (isRefusal(status) && refusable) {
    if (rec.subarray(1, 16).some(x => x !== 0) || rec.subarray(24).some(x => x !== 0)) problems.push(`${where}: a ${status} answer carries more than the tag`)
  }
  if (status === Status.OUTPUT_OVERFLOW && rec.readUInt32LE(4) !== 0) problems.push(`${where}: OUTPUT_OVERFLOW with bytes_completed ${rec.readUInt32LE(4)}`)
}

/**
 * A descriptor's one completion, against what the protocol allows for it. A refusal says
 * nothing about the descriptor beyond its tag; checkRecord judges whether it may happen.
 */
export function checkAgainstDescriptor (rec: Buffer, d: Buffer, where: string, problems: string[]): void {
  const status = rec[0]
  const op = d[0]
  if (rec.readBigUInt64LE(16) !== d.readBigUInt64LE(40)) problems.push(`${where}: tag ${hex(rec.readBigUInt64LE(16))} is not the descriptor's (out of order?)`)
  if (isRefusal(status)) return
  const invalid = status === Status.INVALID_OPCODE || status === Status.INVALID_FIELD
  // DECRYPT with size < 16 (shorter than its tag) is left to the implementation
  const grey = op === Opcode.DECRYPT && d.readUInt32LE(32) < 16
  if (specInvalid(d) && !invalid) problems.push(`${where}: an invalid descriptor completed ${status}`)
  if (!specInvalid(d) && invalid && !grey) problems.push(`${where}: a valid descriptor completed ${status}`)
  if (op !== Opcode.COMPARE && rec[1] !== 0) problems.push(`${where}: result ${rec[1]} for opcode ${op}`)
  if (op === Opcode.COMPARE && rec[1] > 1) problems.push(`${where}: COMPARE result ${rec[1]}`)
  const size = d.readUInt32LE(32)
  const done = rec.readUInt32LE(4)
  if (SIZED.has(op) && done > size) problems.push(`${where}: bytes_completed ${done} > size ${size}`)
  // a COMPARE that finds a difference before a fault may stop there: result 1, the prefix compared
  const differs = op === Opcode.COMPARE && rec[1] === 1
  if (status === Status.SUCCESS && SIZED.has(op) && !differs && done !== size) problems.push(`${where}: SUCCESS with bytes_completed ${done} of ${size}`)
  // docs/PROTOCOL.md section 7: only MEMMOVE, COMPARE and CRC32 process a source prefix
  // before a fault; MEMMOVE and FILL write the destination up to its faulting page.
  if (status === Status.PAGE_FAULT && done !== 0 && !STREAMING.has(op) && op !== Opcode.FILL) problems.push(`${where}: PAGE_FAULT with bytes_completed ${done} for opcode ${op}`)
  if (status === Status.PAGE_FAULT) {
    const fa = rec.readBigUInt64LE(8)
    if (!namedRanges(d).some(([s, e]) => fa >= s && fa < e)) problems.push(`${where}: fault_addr ${hex(fa)} is in no buffer the descriptor names`)
  }
}

// --- arbitraries over the fixture's addresses ---

/** Where the generators aim: A's own buffers, and B's, which A must never reach. */
export interface Layout {
  buf: number
  ro: number
  memberArea: number
  bBuf: number
  bSecret: number
}

export function addrArb (c: Layout): fc.Arbitrary<bigint> {
  const at = (base: number, lo: number, hi: number): fc.Arbitrary<bigint> => fc.integer({ min: lo, max: hi }).map(o => BigInt(base + o))
  return fc.oneof(
    { weight: 6, arbitrary: at(c.buf, 0, 16 * P - 1) },
    { weight: 2, arbitrary: at(c.buf + 16 * P, -512, -1) },
    { weight: 1, arbitrary: at(c.ro, -256, P + 255) },
    { weight: 2, arbitrary: at(c.memberArea, 0, 4 * P - 1).map(a => a & ~63n) },
    { weight: 1, arbitrary: at(c.bBuf, 0, 16 * P - 1) },
    { weight: 1, arbitrary: at(c.bSecret, -64, P - 1) },
    {
      weight: 2,
      arbitrary: fc.constantFrom(0n, 0x1000n, (1n << 47n) - 1n, 1n << 47n, TWO_53 - 1n, TWO_53, TWO_53 + 1n,
        TWO_53 + 0x1000n, 1n << 63n, U64_MAX, U64_MAX - 31n, U64_MAX - 4095n)
    },
    { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: U64_MAX }) }
  )
}

const sizeArb = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 1, max: 2 * P }) },
  { weight: 2, arbitrary: fc.constantFrom(0, 1, 15, 16, 17, 32, 64, P, 16 * P, MAX_TRANSFER, MAX_TRANSFER + 1, 0xffffffff) },
  { weight: 1, arbitrary: fc.nat({ max: 0xffffffff }) }
)

function opArgsArb (c: Layout): fc.Arbitrary<Buffer> {
  const zero = fc.constant(Buffer.alloc(16))
  const pattern = fc.uint8Array({ minLength: 8, maxLength: 8 }).map(u => Buffer.concat([Buffer.from(u), Buffer.alloc(8)]))
  const level = fc.integer({ min: 0, max: 255 }).map(l => { const b = Buffer.alloc(16); b[0] = l; return b })
  const keyIv = fc.tuple(addrArb(c), addrArb(c)).map(([k, iv]) => { const b = Buffer.alloc(16); b.writeBigUInt64LE(k, 0); b.writeBigUInt64LE(iv, 8); return b })
  const random = fc.uint8Array({ minLength: 16, maxLength: 16 }).map(u => Buffer.from(u))
  return fc.oneof({ weight: 3, arbitrary: zero }, { weight: 2, arbitrary: pattern }, { weight: 1, arbitrary: level }, { weight: 2, arbitrary: keyIv }, { weight: 1, arbitrary: random })
}

const flagsArb = fc.oneof({ weight: 5, arbitrary: fc.integer({ min: 0, max: 15 }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) })
const reservedArb = fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 0xffff }) })

/** The completion address: often 32-byte aligned, else anything. */
function caArb (c: Layout): fc.Arbitrary<bigint> {
  return fc.oneof({ weight: 2, arbitrary: fc.constant(0n) }, { weight: 3, arbitrary: addrArb(c).map(a => a & ~31n) }, { weight: 1, arbitrary: addrArb(c) })
}

/** Descriptor recipes, as fields; each file weighs them, and adds its own, in one fc.oneof. */
export interface Recipes<F extends Fields> {
  /** every field hostile */
  hostile: fc.Arbitrary<F>
  /** a BATCH, mostly over the member area */
  batch: fc.Arbitrary<F>
  /** well-formed work on the tenant's own memory, so the success paths run too */
  clean: fc.Arbitrary<F>
}

/**
 * `pasids`: the PASIDs worth naming besides any 32-bit one. `tag`: without it no tag is
 * generated at all, which keeps the random choices (and so a seed's cases) of a file that
 * sets tags itself.
 */
export function descRecipes (c: Layout, pasids: number[]): Recipes<Fields>
export function descRecipes (c: Layout, pasids: number[], tag: fc.Arbitrary<bigint>): Recipes<Required<Fields>>
export function descRecipes (c: Layout, pasids: number[], tag?: fc.Arbitrary<bigint>): Recipes<Fields> {
  // fc.record draws its fields in key order: the tag stays where each file had it, so a
  // reported seed still replays the same cases
  const tagged: { tag?: fc.Arbitrary<bigint> } = tag === undefined ? {} : { tag }
  const hostile: fc.Arbitrary<Fields> = fc.record({
    opcode: fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...OPCODES) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
    flags: flagsArb,
    reserved: reservedArb,
    pasid: fc.oneof(fc.constantFrom(...pasids), fc.nat({ max: 0xffffffff })),
    ca: caArb(c),
    src: addrArb(c),
    dst: addrArb(c),
    size: sizeArb,
    dstSize: sizeArb,
    ...tagged,
    opArgs: opArgsArb(c)
  })
  const batch = fc.record({
    flags: flagsArb,
    ca: caArb(c),
    src: fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 0, max: 63 }).map(k => BigInt(c.memberArea + 64 * k)) }, { weight: 1, arbitrary: addrArb(c) }),
    size: fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 1, max: 8 }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 300 }) }),
    ...tagged
  }).map((f): Fields => ({ ...f, opcode: Opcode.BATCH, reserved: 0, pasid: 0, dst: 0n, dstSize: 0, opArgs: Buffer.alloc(16) }))
  const inside = (lo: number, hi: number): fc.Arbitrary<bigint> => fc.integer({ min: lo, max: hi }).map(o => BigInt(c.buf + o))
  const clean = fc.record({
    opcode: fc.constantFrom(Opcode.NOOP, Opcode.MEMMOVE, Opcode.FILL, Opcode.COMPARE, Opcode.CRC32, Opcode.SHA256, Opcode.DEFLATE, Opcode.INFLATE, Opcode.ENCRYPT, Opcode.DECRYPT, Opcode.DRAIN),
    flags: fc.integer({ min: 0, max: 15 }),
    src: inside(0, 4 * P),
    dst: inside(4 * P, 7 * P),
    size: fc.integer({ min: 16, max: 4 * P }),
    key: inside(0, 15 * P),
    iv: inside(0, 15 * P),
    level: fc.integer({ min: 0, max: 9 }),
    ca: inside(15 * P, 16 * P - 32).map(a => a & ~31n),
    ...tagged
  }).map((f): Fields => {
    const opArgs = Buffer.alloc(16)
    if (f.opcode === Opcode.ENCRYPT || f.opcode === Opcode.DECRYPT) {
      opArgs.writeBigUInt64LE(f.key, 0)
      opArgs.writeBigUInt64LE(f.iv, 8)
    } else if (f.opcode === Opcode.DEFLATE) {
      opArgs[0] = f.level
    } else if (f.opcode === Opcode.FILL) {
      opArgs.writeUInt32LE(0xa5a55a5a, 0)
    }
    return { opcode: f.opcode, flags: f.flags, reserved: 0, pasid: 0, ca: f.ca, src: f.src, dst: f.dst, size: f.size, dstSize: 4 * P, tag: f.tag, opArgs }
  })
  return { hostile, batch, clean }
}

// --- the fixture ---

/**
 * The app both properties run against. Isolation after 64 faults would turn every later
 * answer into QUEUE_DISABLED, so it is put out of reach.
 */
export async function fuzzApp (t: Test): Promise<FastifyInstance> {
  const devices = testDevices().map(d => ({ ...d, isolateStrategy: { faults: 1e9, windowMs: 60000 } }))
  const app = await build(t, { WARPD_PHYS_MEM_BYTES: 32 * 2 ** 20, WARPD_RATE_LIMIT: 1e6 }, { devices })
  // Teardowns run last-registered first: this one runs before build()'s app.close(). Work a
  // failed run left stuck (a hang these files exist to find) is aborted, so the close, which
  // drains the devices, cannot wait for it for ever.
  t.teardown(async () => {
    for (const [id, d] of app.uacce.devices) {
      if (d.dev.outstanding > 0) await app.inject({ method: 'POST', url: `/v1/admin/devices/${id}/reset`, headers: adminHeaders })
    }
  })
  return app
}

export interface Fuzzer {
  a: TestTenant
  aPid: number
  buf: number
  ro: number
  memberArea: number
}

/** Tenant A: 16 pages of seeded bytes, the upper half for batch members and records, and a read-only page. */
export async function createFuzzer (app: FastifyInstance, quotas: Record<string, number> = {}): Promise<Fuzzer> {
  const a = await createTenant(app, quotas)
  const aPid = await createProcess(app, a)
  const buf = Number(await mmap(app, a, aPid, { length: 16 * P, prot: 'rw' }))
  const ro = Number(await mmap(app, a, aPid, { length: P, prot: 'r' }))
  await store(app, a, aPid, buf, bytesFrom(1, 16 * P))
  return { a, aPid, buf, ro, memberArea: buf + 8 * P }
}

export interface Bystander {
  b: TestTenant
  bPid: number
  bBuf: number
  bSecret: number
  /** what B's 16 pages must hold; kept up to date by whatever B itself writes */
  bModel: Buffer
  secretModel: Buffer
}

/** Tenant B: 16 pages and a page at a fixed address, filled with `fill(length)`. */
export async function createBystander (app: FastifyInstance, fill: (length: number) => Buffer): Promise<Bystander> {
  const b = await createTenant(app)
  const bPid = await createProcess(app, b)
  const bBuf = Number(await mmap(app, b, bPid, { length: 16 * P, prot: 'rw' }))
  const bSecret = Number(await mmap(app, b, bPid, { length: P, prot: 'rw', addr: '0x66660000' }))
  const bModel = fill(16 * P)
  const secretModel = fill(P)
  await store(app, b, bPid, bBuf, bModel)
  await store(app, b, bPid, bSecret, secretModel)
  return { b, bPid, bBuf, bSecret, bModel, secretModel }
}

/**
 * On a fresh app (nothing mapped yet): tenant A's page, 0xaa, physically followed by tenant
 * B's, 0xbb, and a dedicated queue of A's; a record that spills past A's page lands in B's.
 */
export async function adjacentPages (t: Test, app: FastifyInstance): Promise<{ a: TestTenant, aPid: number, aBuf: number, b: TestTenant, bPid: number, bBuf: number, qid: string }> {
  const a = await createTenant(app)
  const aPid = await createProcess(app, a)
  const aBuf = Number(await mmap(app, a, aPid, { length: P, prot: 'rw' }))
  const b = await createTenant(app)
  const bPid = await createProcess(app, b)
  const bBuf = Number(await mmap(app, b, bPid, { length: P, prot: 'rw' }))
  await store(app, a, aPid, aBuf, Buffer.alloc(P, 0xaa))
  await store(app, b, bPid, bBuf, Buffer.alloc(P, 0xbb))
  const frame = (pid: number, va: number): number => Math.floor((app.kernel.processes.get(pid)?.mm.pt.get(va / P) ?? 0) / 8)
  t.equal(frame(bPid, bBuf), frame(aPid, aBuf) + 1, 'precondition: B\'s page is the frame after A\'s')
  const q = await createQueue(app, a, 'wd0', { pid: aPid })
  return { a, aPid, aBuf, b, bPid, bBuf, qid: q.qid }
}
