import t from 'tap'
import crypto from 'node:crypto'
import zlib from 'node:zlib'
import { CR_SIZE, DESC, DESC_SIZE, FaultInfo, Flag, Opcode, Status, readCompletion, writeU64 } from '../../src/hw/descriptor.ts'
import { INLINE_PER_TURN } from '../../src/hw/accel-device.ts'
import { QueueState, type QueuePort } from '../../src/hw/hw-queue.ts'
import { Prot } from '../../src/kernel/vma.ts'
import { P, Rig, deviceConfig, encode, run } from './device-rig.ts'

function rand (n: number, seed: number): Buffer {
  return crypto.createHash('sha256').update(String(seed)).digest().length > 0
    ? Buffer.from(crypto.randomBytes(n))
    : Buffer.alloc(0)
}

function u64 (v: number): Uint8Array {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(BigInt(v))
  return b
}

function opArgs (...parts: Uint8Array[]): Uint8Array {
  const a = new Uint8Array(16)
  let o = 0
  for (const p of parts) { a.set(p, o); o += p.length }
  return a
}

t.test('every opcode through an SVA queue, byte-exact against crypto and zlib', async t => {
  const rig = new Rig()
  t.teardown(() => rig.close())
  const q = rig.dev.allocQueue('dedicated')
  t.ok(q)
  if (q === undefined) return
  const col = rig.collector(q)
  // Destinations are fresh, untouched memory: the device faults them in by page requests.
  const c = { ...col, port: { submit: (b: Uint8Array, o: number, n: number) => { for (let i = 0; i < n; i++) b[o + i * 64 + 1] |= Flag.BLOCK_ON_FAULT; return col.port.submit(b, o, n) } } } as unknown as typeof col
  Object.defineProperty(c, 'count', { get: () => col.count })
  for (const size of [1, 63, 4097, 65536 + 13]) {
    const src = rig.map(size + 2 * P)
    const dst = rig.map(2 * size + 2 * P)
    const data = rand(size, size)
    // unaligned, spanning frames the kernel handed out one fault at a time
    const s = src + 5
    const d = dst + 11
    rig.store(s, data)
    const [mv] = await run(c, [{ opcode: Opcode.MEMMOVE, src: s, dst: d, size, tag: 1n }])
    t.equal(mv.status, Status.SUCCESS)
    t.same(Buffer.from(rig.load(d, size)), data, `MEMMOVE ${size}`)

    const pattern = Buffer.from('0123456789abcdef', 'hex').subarray(0, 8)
    const [fl] = await run(c, [{ opcode: Opcode.FILL, dst: d, size, tag: 2n, opArgs: opArgs(pattern) }])
    t.equal(fl.status, Status.SUCCESS)
    const want = Buffer.alloc(size)
    for (let i = 0; i < size; i++) want[i] = pattern[i % 8]
    t.same(Buffer.from(rig.load(d, size)), want, `FILL ${size}`)

    rig.store(d, data)
    if (size > 1) rig.store(d + size - 1, new Uint8Array([data[size - 1] ^ 0xff]))
    const [cmp] = await run(c, [{ opcode: Opcode.COMPARE, src: s, dst: d, size, tag: 3n }])
    t.equal(cmp.status, Status.SUCCESS)
    if (size > 1) t.same([cmp.result, cmp.value], [1, size - 1], `COMPARE ${size} finds the last byte`)
    else t.same([cmp.result], [0])

    const seed = 0x12345678
    const [crc] = await run(c, [{ opcode: Opcode.CRC32, src: s, size, tag: 4n, opArgs: opArgs(u64(seed).subarray(0, 4)) }])
    t.equal(crc.status, Status.SUCCESS)
    if (typeof (zlib as { crc32?: unknown }).crc32 === 'function') {
      t.equal(crc.value, (zlib as unknown as { crc32: (d: Uint8Array, s: number) => number }).crc32(data, seed), `CRC32 ${size}`)
    }

    const [sha] = await run(c, [{ opcode: Opcode.SHA256, src: s, dst: d, size, tag: 5n }])
    t.equal(sha.status, Status.SUCCESS)
    t.same(Buffer.from(rig.load(d, 32)), crypto.createHash('sha256').update(data).digest(), `SHA256 ${size}`)

    const [def] = await run(c, [{ opcode: Opcode.DEFLATE, src: s, dst: d, size, dstSize: size + 1024, tag: 6n, opArgs: opArgs(new Uint8Array([1])) }])
    t.equal(def.status, Status.SUCCESS)
    const deflated = zlib.deflateRawSync(data, { level: 1 })
    t.equal(def.value, deflated.length)
    t.same(Buffer.from(rig.load(d, def.value)), deflated, `DEFLATE ${size}`)

    rig.store(s, deflated)
    const [inf] = await run(c, [{ opcode: Opcode.INFLATE, src: s, dst: d, size: deflated.length, dstSize: size, tag: 7n }])
    t.equal(inf.status, Status.SUCCESS)
    t.same(Buffer.from(rig.load(d, inf.value)), data, `INFLATE ${size}`)

    const key = crypto.randomBytes(32)
    const iv = crypto.randomBytes(12)
    const kaddr = rig.map(P)
    rig.store(kaddr, key)
    rig.store(kaddr + 100, iv)
    rig.store(s, data)
    const aes = opArgs(u64(kaddr), u64(kaddr + 100))
    const [enc] = await run(c, [{ opcode: Opcode.ENCRYPT, src: s, dst: d, size, dstSize: size + 16, tag: 8n, opArgs: aes }])
    t.equal(enc.status, Status.SUCCESS)
    const cipher = crypto.createCipheriv('aes-256-gcm', key, iv)
    const expect = Buffer.concat([cipher.update(data), cipher.final(), cipher.getAuthTag()])
    t.same(Buffer.from(rig.load(d, size + 16)), expect, `ENCRYPT ${size}`)
    const back = rig.map(size + P)
    const [dec] = await run(c, [{ opcode: Opcode.DECRYPT, src: d, dst: back, size: size + 16, dstSize: size, tag: 9n, opArgs: aes }])
    t.equal(dec.status, Status.SUCCESS)
    t.same(Buffer.from(rig.load(back, size)), data, `DECRYPT ${size}`)
    rig.store(d, new Uint8Array([expect[0] ^ 1]))
    const [bad] = await run(c, [{ opcode: Opcode.DECRYPT, src: d, dst: back, size: size + 16, dstSize: size, tag: 10n, opArgs: aes }])
    t.equal(bad.status, Status.DATA_ERROR, 'a tampered ciphertext fails authentication')
  }
})

t.test('completion records land in memory, status byte last; tags echo; INVALID_* answered', async t => {
  const rig = new Rig()
  t.teardown(() => rig.close())
  const q = rig.dev.allocQueue('dedicated')
  if (q === undefined) return t.fail('no queue')
  const c = rig.collector(q)
  const cr = rig.map(P)
  const [ok] = await run(c, [{ opcode: Opcode.NOOP, flags: Flag.COMPLETION_RECORD, completionAddr: cr + 64, tag: 0xfeedn }])
  t.equal(ok.status, Status.SUCCESS)
  const rec = readCompletion(rig.load(cr + 64, CR_SIZE))
  t.equal(rec.status, Status.SUCCESS)
  t.equal(rec.tag, 0xfeedn)
  const [mis] = await run(c, [{ opcode: Opcode.NOOP, flags: Flag.COMPLETION_RECORD, completionAddr: cr + 8, tag: 2n }])
  t.equal(mis.status, Status.INVALID_FIELD, 'misaligned completion_addr')
  const [res] = await run(c, [{ opcode: Opcode.NOOP, flags: 0x10, tag: 3n }])
  t.equal(res.status, Status.INVALID_FIELD, 'reserved flag bit')
  const [op] = await run(c, [{ opcode: 0x42, tag: 4n }])
  t.equal(op.status, Status.INVALID_OPCODE)
  const [big] = await run(c, [{ opcode: Opcode.MEMMOVE, src: cr, dst: cr, size: 2 ** 21, tag: 5n }])
  t.equal(big.status, Status.INVALID_FIELD, 'over maxTransferSize')
})

t.test('faults: PAGE_FAULT with where and why; BLOCK_ON_FAULT served by a page request', async t => {
  const rig = new Rig()
  t.teardown(() => rig.close())
  const q = rig.dev.allocQueue('dedicated')
  if (q === undefined) return t.fail('no queue')
  const c = rig.collector(q)
  const src = rig.map(2 * P)
  const dst = rig.map(2 * P)
  rig.store(src, new Uint8Array(P).fill(3)) // page 0 present, page 1 not yet
  rig.store(dst, new Uint8Array(2 * P))
  const [pf] = await run(c, [{ opcode: Opcode.MEMMOVE, src: src + 100, dst, size: P, tag: 1n }])
  t.equal(pf.status, Status.PAGE_FAULT)
  t.equal(pf.faultAddr, src + P)
  t.equal(pf.bytesCompleted, P - 100, 'the prefix before the fault was processed')
  t.equal(pf.faultInfo, 0, 'a read of a not-present page: recoverable')
  t.same(rig.load(dst, 4), new Uint8Array([3, 3, 3, 3]), 'and landed')
  const [blk] = await run(c, [{ opcode: Opcode.MEMMOVE, flags: Flag.BLOCK_ON_FAULT, src: src + 100, dst, size: P, tag: 2n }])
  t.equal(blk.status, Status.SUCCESS, 'BLOCK_ON_FAULT: the page request faulted the page in')
  const [none] = await run(c, [{ opcode: Opcode.SHA256, flags: Flag.BLOCK_ON_FAULT, src: 0x1000, dst, size: 10, tag: 3n }])
  t.equal(none.status, Status.PAGE_FAULT, 'no mapping is never served')
  t.equal(none.faultInfo, FaultInfo.NO_MAPPING)
  const ro = rig.map(P, Prot.READ)
  rig.load(ro, 1)
  const [w] = await run(c, [{ opcode: Opcode.FILL, dst: ro, size: 8, tag: 4n }])
  t.equal(w.status, Status.PAGE_FAULT)
  t.equal(w.faultInfo, FaultInfo.WRITE, 'write to a read-only page')
  t.equal(w.faultAddr, ro)
  t.ok(rig.p.mm.faultQueue.length >= 3, 'faults are in the process fault queue')
})

t.test('the PASID is the port\'s: forged bytes change nothing; another process\'s memory is never reached', async t => {
  const rig = new Rig()
  t.teardown(() => rig.close())
  const other = rig.kernel.createProcess('u')
  const otherPasid = rig.kernel.bindPasid(other)
  if (!otherPasid.ok) return t.fail('bind')
  const s = other.mm.mmap({ length: P, prot: Prot.READ | Prot.WRITE, shared: false, addr: 0x66660000 })
  if (!s.ok) return t.fail('mmap')
  const secret = s.value
  rig.store(secret, Buffer.from('secret of another tenant'), other)
  const q = rig.dev.allocQueue('dedicated')
  if (q === undefined) return t.fail('no queue')
  const c = rig.collector(q)
  const mine = rig.map(P)
  rig.store(mine, new Uint8Array(64))
  const [x] = await run(c, [{ opcode: Opcode.MEMMOVE, pasid: otherPasid.value, src: secret, dst: mine, size: 24, tag: 1n }])
  t.equal(x.status, Status.PAGE_FAULT, 'translated under my own PASID: no mapping there')
  t.same(rig.load(mine, 24), new Uint8Array(24), 'nothing of the other process arrived')
  // the queue's own copy of the descriptor carries the port's PASID, as ENQCMD stamps it
  const slots = Array.from({ length: q.depth }, (_, i) => Buffer.from(q.ring.subarray(i * DESC_SIZE, (i + 1) * DESC_SIZE)))
  const copy = slots.find(d => d.readBigUInt64LE(DESC.TAG) === 1n)
  t.equal(copy?.readUInt32LE(DESC.PASID), rig.pasid, 'stamped over the forged bytes')
})

t.test('a write takes the lowest free ring slots, in order, around a slot still busy', async t => {
  // One engine, busy with a long DEFLATE in slot 1 while slots 0 and 2 are answered at
  // once (an unknown opcode): the next write's slots are 0 (a run of one, copied word by
  // word) and 2 on (a run, copied whole), and each lands where it was put.
  const rig = new Rig(deviceConfig({ engines: 1, queues: [{ mode: 'dedicated', depth: 64, priority: 1 }] }))
  t.teardown(() => rig.close())
  const q = rig.dev.allocQueue('dedicated')
  if (q === undefined) return t.fail('no queue')
  const c = rig.collector(q)
  const size = 2 ** 20
  const src = rig.map(size)
  rig.store(src, rand(size, 7))
  const out = rig.map(size + P)
  rig.store(out, new Uint8Array(size + P))
  const bad = { opcode: 0x7E, tag: 1n }
  const first = encode([bad, { opcode: Opcode.DEFLATE, src, dst: out, size, dstSize: size + P, tag: 2n, opArgs: opArgs(new Uint8Array([9])) }, { ...bad, tag: 3n }])
  t.equal(c.port.submit(first, 0, 3), 3)
  await c.waitFor(2)
  t.same([c.completions.get(1n)?.[0].status, c.completions.get(3n)?.[0].status], [Status.INVALID_OPCODE, Status.INVALID_OPCODE], 'slots 0 and 2 answered')
  t.notOk(c.completions.has(2n), 'slot 1 still busy with its DEFLATE')
  const PER = 12
  const fills = rig.map(PER * 16)
  rig.store(fills, new Uint8Array(PER * 16))
  const descs = Array.from({ length: PER }, (_, i) => ({ opcode: Opcode.FILL, dst: fills + i * 16, size: 16, tag: BigInt(10 + i), opArgs: opArgs(u64(1000 + i)) }))
  t.equal(c.port.submit(encode(descs), 0, PER), PER)
  const tagIn = (slot: number): bigint => Buffer.from(q.ring.subarray(slot * DESC_SIZE, (slot + 1) * DESC_SIZE)).readBigUInt64LE(DESC.TAG)
  t.same([0, 1, 2, 3, PER].map(tagIn), [10n, 2n, 11n, 12n, BigInt(10 + PER - 1)], 'slots 0, 2, 3, ... in order; slot 1 untouched')
  await c.waitFor(3 + PER)
  for (let i = 0; i < PER; i++) {
    const want = Buffer.alloc(16)
    want.writeBigUInt64LE(BigInt(1000 + i), 0)
    want.writeBigUInt64LE(BigInt(1000 + i), 8)
    t.equal(c.completions.get(BigInt(10 + i))?.[0].status, Status.SUCCESS)
    t.same(Buffer.from(rig.load(fills + i * 16, 16)), want, `FILL ${i} ran as written`)
  }
  t.equal(c.completions.get(2n)?.[0].status, Status.SUCCESS, 'and the DEFLATE completed')
  // writes of 40 take slots across the bitmap's 32-slot words; once they are answered the
  // next write starts again at slot 0
  let done = 3 + PER
  for (let round = 0; round < 4; round++) {
    const noops = Array.from({ length: 40 }, (_, i) => ({ opcode: Opcode.NOOP, tag: BigInt(1000 * (round + 1) + i) }))
    t.equal(c.port.submit(encode(noops), 0, 40), 40)
    t.same([0, 31, 32, 39].map(tagIn), [0, 31, 32, 39].map(i => BigInt(1000 * (round + 1) + i)), `round ${round}: slots 0 to 39, in order`)
    done += 40
    await c.waitFor(done)
  }
})

t.test('a doorbell write is copied whole, from any byte offset, into whichever slots are free', async t => {
  // Two engines; the source sits at every phase of a word (copied in words from where it
  // lies when aligned, from a staging copy when not).
  const rig = new Rig(deviceConfig({ engines: 2, queues: [{ mode: 'dedicated', depth: 64, priority: 1 }] }))
  t.teardown(() => rig.close())
  const q = rig.dev.allocQueue('dedicated')
  if (q === undefined) return t.fail('no queue')
  const c = rig.collector(q)
  const PER = 24
  const dst = rig.map(PER * 16)
  rig.store(dst, new Uint8Array(PER * 16))
  let tag = 1n
  for (let round = 0; round < 16; round++) {
    const phase = round % 8
    const descs = Array.from({ length: PER }, (_, i) => ({
      opcode: Opcode.FILL,
      dst: dst + i * 16,
      size: 16,
      tag: tag++,
      opArgs: opArgs(u64(round * 256 + i + 1))
    }))
    const body = encode(descs)
    const buf = new Uint8Array(body.length + DESC_SIZE + 16)
    // first a longer write of all-ones bytes from the same phase (each answered
    // INVALID_OPCODE, tag all ones): any byte the next copy missed would be left set
    buf.fill(0xFF)
    const junk = c.count
    t.equal(c.port.submit(buf, phase, PER + 1), PER + 1)
    await c.waitFor(junk + PER + 1)
    c.completions.delete(2n ** 64n - 1n)
    buf.fill(0)
    buf.set(body, phase)
    const before = c.count
    t.equal(c.port.submit(buf, phase, PER), PER)
    // the device has its own copy: what the tenant writes next changes nothing
    buf.fill(0xEE)
    await c.waitFor(before + PER)
    for (let i = 0; i < PER; i++) {
      const d = descs[i]
      const cr = c.completions.get(d.tag)?.shift()
      if (cr?.status !== Status.SUCCESS) return t.fail(`round ${round} descriptor ${i}: ${cr?.status}`)
      const want = Buffer.alloc(16)
      want.writeBigUInt64LE(BigInt(round * 256 + i + 1), 0)
      want.writeBigUInt64LE(BigInt(round * 256 + i + 1), 8)
      if (!Buffer.from(rig.load(dst + i * 16, 16)).equals(want)) return t.fail(`round ${round} phase ${phase} descriptor ${i}: wrong bytes`)
    }
  }
  t.pass('16 writes at every phase, every descriptor ran as written')
})

t.test('an address of 2**53 or more faults with the exact value the tenant wrote', async t => {
  // No number holds such an address; the device used to throw writing the record, and
  // the descriptor was never answered. Each address field a descriptor can name.
  const rig = new Rig()
  t.teardown(() => rig.close())
  const q = rig.dev.allocQueue('dedicated')
  if (q === undefined) return t.fail('no queue')
  const c = rig.collector(q)
  const buf = rig.map(P)
  rig.store(buf, new Uint8Array(P))
  const wide = (1n << 60n) + 0x1234n
  const cases: Array<[string, Parameters<typeof encode>[0][0], number, number]> = [
    ['src', { opcode: Opcode.MEMMOVE, dst: buf, size: 16 }, DESC.SRC, 0],
    ['dst', { opcode: Opcode.MEMMOVE, src: buf, size: 16 }, DESC.DST, FaultInfo.WRITE],
    ['dst of SHA256', { opcode: Opcode.SHA256, src: buf, size: 16 }, DESC.DST, FaultInfo.WRITE],
    ['key', { opcode: Opcode.ENCRYPT, src: buf, dst: buf + 256, size: 16, dstSize: 64, opArgs: opArgs(u64(0), u64(buf + 128)) }, DESC.OP_ARGS, 0],
    ['iv', { opcode: Opcode.ENCRYPT, src: buf, dst: buf + 256, size: 16, dstSize: 64, opArgs: opArgs(u64(buf + 64), u64(0)) }, DESC.OP_ARGS + 8, 0],
    ['batch array', { opcode: Opcode.BATCH, size: 2 }, DESC.SRC, 0],
    ['src, blocking on faults', { opcode: Opcode.MEMMOVE, flags: Flag.BLOCK_ON_FAULT, dst: buf, size: 16 }, DESC.SRC, 0]
  ]
  let tag = 100n
  for (const [name, d, field, info] of cases) {
    const bytes = encode([{ ...d, tag: ++tag }])
    writeU64(bytes, field, wide + tag)
    const before = c.count
    t.equal(c.port.submit(bytes, 0, 1), 1, `${name}: accepted`)
    await c.waitFor(before + 1)
    const cr = c.completions.get(tag)?.[0]
    t.equal(cr?.status, Status.PAGE_FAULT, `${name}: PAGE_FAULT`)
    t.equal(cr?.faultAddr, wide + tag, `${name}: fault_addr is exactly what was written`)
    t.equal(cr?.faultInfo, info | FaultInfo.NO_MAPPING, `${name}: fault_info`)
    t.equal(rig.p.mm.faultQueue.at(-1)?.addr, wide + tag, `${name}: and in the process's fault log`)
  }
  const [after] = await run(c, [{ opcode: Opcode.NOOP, tag: 1n }])
  t.equal(after.status, Status.SUCCESS, 'and the device goes on')
})

/** `n` NOOPs, encoded */
function noops (n: number): Uint8Array {
  return encode(Array.from({ length: n }, () => ({ opcode: Opcode.NOOP })))
}

/** Waits, up to 10 s, until `order` holds `n` completions. */
async function settle (order: unknown[], n: number): Promise<void> {
  const deadline = Date.now() + 10000
  while (order.length < n && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 5))
}

/**
 * One engine, not polling, so it runs jobs in the order the arbiter started them and the
 * completion order is the arbiter's (an awake one would take one queue's writes before
 * the next queue's came); three queues of priorities 3, 5 and 1; `order` hears which
 * queue each completion came from.
 */
function arbiterRig (arbiterQuantum: number): { rig: Rig, order: number[], ports: QueuePort[] } {
  const rig = new Rig(deviceConfig({
    engines: 1,
    pollUs: 0,
    arbiterQuantum,
    queues: [{ mode: 'dedicated', depth: 64, priority: 3 }, { mode: 'dedicated', depth: 64, priority: 5 }, { mode: 'dedicated', depth: 64, priority: 1 }]
  }))
  const order: number[] = []
  const ports = rig.dev.queues.map((q, i) => q.attach(rig.pasid, rig.pasid, { completion: () => { order.push(i) } }))
  return { rig, order, ports }
}

/** As arbiterRig, over one shared queue: PASID a of weight 2 and PASID b of weight 1. */
function sharedRig (arbiterQuantum: number): { rig: Rig, order: string[], a: QueuePort, b: QueuePort } {
  const rig = new Rig(deviceConfig({ engines: 1, pollUs: 0, arbiterQuantum, queues: [{ mode: 'shared', depth: 64, priority: 1 }] }))
  const q = rig.dev.sharedQueue()
  const other = rig.kernel.bindPasid(rig.kernel.createProcess('u'))
  if (q === undefined || !other.ok) throw new Error('no shared queue, or no second PASID')
  const order: string[] = []
  const a = q.attach(rig.pasid, rig.pasid, { completion: () => { order.push('a') } }, 2)
  const b = q.attach(other.value, other.value, { completion: () => { order.push('b') } }, 1)
  return { rig, order, a, b }
}

t.test('the arbiter serves queues with work by priority, and skips the idle ones', async t => {
  // Queues 0 and 2 have work (priorities 3 and 1), queue 1 none. No quantum: a visit is
  // `priority` descriptors (the quantum has its own test).
  const { rig, order, ports } = arbiterRig(0)
  t.teardown(() => rig.close())
  t.equal(ports[0].submit(noops(30), 0, 30), 30)
  t.equal(ports[2].submit(noops(12), 0, 12), 12)
  const deadline = Date.now() + 10000
  while (order.length < 42 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 5))
  t.equal(order.length, 42)
  t.same(order.slice(0, 16), [0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2], 'three of queue 0 for each of queue 2')
  t.same(order.slice(36), [0, 0, 0, 2, 2, 2], 'queue 0 done after 40, queue 2 has the engine alone')
  // both drained: a queue with new work is served at once, at its priority
  order.length = 0
  t.equal(ports[1].submit(noops(6), 0, 6), 6)
  t.equal(ports[2].submit(noops(3), 0, 3), 3)
  while (order.length < 9 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 5))
  t.equal(order.length, 9)
  // wherever the round was, its first six are five of queue 1 and one of queue 2 (1111121 or 2111112)
  t.equal(order.slice(0, 6).filter(q => q === 1).length, 5, 'five of queue 1 for each of queue 2, from wherever the round was')
  t.ok(order.slice(0, 7).join('').includes('11111'), 'the five in a row')
  // Queue 0 emptied at the end of the first part with one credit of its round unspent.
  // Back with work, it has its full round again: three at a time, wherever the round is.
  order.length = 0
  t.equal(ports[0].submit(noops(6), 0, 6), 6)
  t.equal(ports[2].submit(noops(6), 0, 6), 6)
  while (order.length < 12 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 5))
  t.equal(order.length, 12)
  const runs = order.join('').split(/2+/).filter(r => r !== '').map(r => r.length)
  t.same(runs, [3, 3], `queue 0 three at a time (${order.join('')})`)
})

t.test('a shared queue serves its PASIDs by weight, and a PASID back with work has its full round', async t => {
  // no quantum: a visit is `weight` descriptors
  const { rig, order, a, b } = sharedRig(0)
  t.teardown(() => rig.close())
  const drain = async (n: number): Promise<void> => await settle(order, n)
  // weights 2 and 1: two of a for each of b; a's last leaves one credit of its round unspent
  t.equal(a.submit(noops(6), 0, 6), 6)
  t.equal(b.submit(noops(4), 0, 4), 4)
  await drain(10)
  t.equal(order.join(''), 'aabaabaabb', 'two of a for each of b')
  // back with work, a has its whole round again: two at a time, wherever the round is
  order.length = 0
  t.equal(a.submit(noops(4), 0, 4), 4)
  t.equal(b.submit(noops(4), 0, 4), 4)
  await drain(8)
  t.equal(order.length, 8)
  t.same(order.join('').split(/b+/).filter(r => r !== '').map(r => r.length), [2, 2], `a two at a time (${order.join('')})`)
})

t.test('a visit of the arbiter goes on through a quantum of small descriptors, and stays at its priority for big ones', async t => {
  // A quantum of 2 KiB: four descriptors of the least cost (512 bytes) a unit of priority.
  const { rig, order, ports } = arbiterRig(2048)
  t.teardown(() => rig.close())
  t.equal(ports[0].submit(noops(30), 0, 30), 30)
  t.equal(ports[2].submit(noops(12), 0, 12), 12)
  await settle(order, 42)
  const runs = (xs: number[]): string[] => xs.join('').match(/(.)\1*/g) ?? []
  t.same(runs(order), ['0'.repeat(12), '2222', '0'.repeat(12), '2222', '000000', '2222'],
    'twelve NOOPs of queue 0 (priority 3) a visit, four of queue 2 (priority 1)')
  // 4 KiB each: one is past a unit's quantum, so a visit is its priority's count, 3 to 1
  const src = rig.map(4 * P)
  const dst = rig.map(64 * P)
  const moves = (n: number, base: number): Uint8Array => encode(Array.from({ length: n }, (_, i) => ({ opcode: Opcode.MEMMOVE, src, dst: dst + (base + i) * P, size: P })))
  order.length = 0
  t.equal(ports[0].submit(moves(12, 0), 0, 12), 12)
  t.equal(ports[2].submit(moves(4, 32), 0, 4), 4)
  await settle(order, 16)
  t.same(runs(order), ['000', '2', '000', '2', '000', '2', '000', '2'], 'three of queue 0 for each of queue 2')
})

t.test('a port leaving a shared queue takes only its own waiting work out', async t => {
  // Its waiting descriptors complete ABORTED; the other PASID's, queued around them, stay
  // queued once (they used to be queued a second time: the occupancy never came back to
  // 0, and a FENCE behind them never ran).
  const rig = new Rig(deviceConfig({ queues: [{ mode: 'shared', depth: 64, priority: 1 }] }))
  t.teardown(() => rig.close())
  await rig.dev.pool.ready()
  const q = rig.dev.sharedQueue()
  const other = rig.kernel.bindPasid(rig.kernel.createProcess('u'))
  if (q === undefined || !other.ok) return t.fail('no shared queue, or no second PASID')
  const mine = rig.collector(q)
  const theirs = rig.collector(q, other.value)
  const noops = (...tags: number[]): Uint8Array => encode(tags.map(tag => ({ opcode: Opcode.NOOP, tag: BigInt(tag) })))
  // writes of fewer than 8 wait for the arbiter's next turn: all are still queued here
  t.equal(theirs.port.submit(noops(1, 2, 3), 0, 3), 3)
  t.equal(mine.port.submit(noops(4, 5, 6), 0, 3), 3)
  t.equal(theirs.port.submit(noops(7, 8), 0, 2), 2)
  t.equal(q.occupancy, 8)
  rig.dev.abortPort(mine.port)
  t.same([4n, 5n, 6n].map(tag => mine.completions.get(tag)?.[0].status), [Status.ABORTED, Status.ABORTED, Status.ABORTED], 'the leaving port\'s work aborted')
  t.equal(q.occupancy, 5, 'the other PASID\'s five still queued, once')
  await theirs.waitFor(5)
  t.same([1n, 2n, 3n, 7n, 8n].map(tag => theirs.completions.get(tag)?.[0].status), Array(5).fill(Status.SUCCESS), 'and they ran')
  t.equal(q.occupancy, 0, 'the queue is empty again')
  t.equal(theirs.port.submit(encode([{ opcode: Opcode.NOOP, flags: Flag.FENCE, tag: 9n }]), 0, 1), 1)
  await theirs.waitFor(6, 4000).catch(() => {})
  t.equal(theirs.completions.get(9n)?.[0].status, Status.SUCCESS, 'a FENCE behind them runs')
})

t.test('a shared queue\'s PASIDs share a quantum by weight too', async t => {
  const { rig, order, a, b } = sharedRig(2048)
  t.teardown(() => rig.close())
  t.equal(a.submit(noops(16), 0, 16), 16)
  t.equal(b.submit(noops(8), 0, 8), 8)
  await settle(order, 24)
  t.equal(order.join(''), 'a'.repeat(8) + 'bbbb' + 'a'.repeat(8) + 'bbbb', 'eight of a (weight 2) a visit, four of b (weight 1)')
})

t.test('doorbell writes from separate callbacks of one event-loop turn reach a sleeping engine as one publish', async t => {
  // Between two sockets' callbacks Node runs the microtask queue; with the engine asleep
  // the arbiter must wait for the turn, not the callback, or each request of the mediated
  // path costs a publish and often a futex wake.
  // NOOPs go to the engine only with inlineBytes 0; the front end runs them itself otherwise
  const rig = new Rig(deviceConfig({ engines: 1, pollUs: 0, inlineBytes: 0, queues: [{ mode: 'dedicated', depth: 64, priority: 1 }, { mode: 'dedicated', depth: 64, priority: 1 }, { mode: 'dedicated', depth: 64, priority: 1 }] }))
  t.teardown(() => rig.close())
  await rig.dev.pool.ready()
  const cs = rig.dev.queues.map(q => rig.collector(q))
  const before = rig.dev.pool.stats().batches
  for (const c of cs) {
    t.equal(c.port.submit(encode([{ opcode: Opcode.NOOP, tag: 1n }, { opcode: Opcode.NOOP, tag: 2n }]), 0, 2), 2)
    await Promise.resolve()
  }
  for (const c of cs) await c.waitFor(2)
  t.equal(rig.dev.pool.stats().batches - before, 1, 'one publish for the three writes')
  t.ok(cs.every(c => c.completions.get(1n)?.[0].status === Status.SUCCESS && c.completions.get(2n)?.[0].status === Status.SUCCESS))
})

t.test('NOOPs, MEMMOVEs and COMPAREs up to inlineBytes run on the front end; the rest, and all with inlineBytes 0, on an engine', async t => {
  for (const inlineBytes of [P, 0]) {
    const rig = new Rig(deviceConfig({ inlineBytes }))
    t.teardown(() => rig.close())
    await rig.dev.pool.ready()
    const q = rig.dev.allocQueue('dedicated')
    if (q === undefined) return t.fail('no queue')
    const c = rig.collector(q)
    const buf = rig.map(8 * P)
    const data = crypto.randomBytes(2 * P)
    // every page present: a descriptor without BLOCK_ON_FAULT faults on one never touched
    rig.store(buf, Buffer.concat([data, Buffer.alloc(6 * P)]))
    const pattern = Buffer.from('0123456789abcdef', 'hex')
    const done = await run(c, [
      { opcode: Opcode.NOOP, tag: 1n },
      { opcode: Opcode.MEMMOVE, src: buf + 5, dst: buf + 2 * P, size: P, tag: 2n },
      { opcode: Opcode.COMPARE, src: buf, dst: buf + P, size: 64, tag: 3n },
      { opcode: Opcode.MEMMOVE, src: buf, dst: buf + 4 * P, size: P + 1, tag: 4n },
      { opcode: Opcode.FILL, dst: buf + 6 * P, size: 64, opArgs: Uint8Array.from([...pattern, ...new Array(8).fill(0)]), tag: 5n },
      { opcode: Opcode.CRC32, src: buf, size: 64, tag: 6n }
    ])
    const why = `inlineBytes ${inlineBytes}`
    t.same(done.map(x => x.status), new Array(6).fill(Status.SUCCESS), why)
    t.same(Buffer.from(rig.load(buf + 2 * P, P)), data.subarray(5, 5 + P), `${why}: MEMMOVE of a page`)
    let first = 0
    while (data[first] === data[P + first]) first++
    t.same([done[2].result, done[2].value], [1, first], `${why}: COMPARE`)
    t.same(Buffer.from(rig.load(buf + 4 * P, P + 1)), data.subarray(0, P + 1), `${why}: MEMMOVE of a page and a byte`)
    t.same(Buffer.from(rig.load(buf + 6 * P, 64)), Buffer.concat(new Array(8).fill(pattern)), `${why}: FILL`)
    t.equal(done[5].value, zlib.crc32(data.subarray(0, 64)), `${why}: CRC32`)
    t.equal(rig.dev.inlineJobs, inlineBytes > 0 ? 3 : 0, `${why}: jobs run on the front end`)
    t.equal(rig.dev.pool.stats().submitted, inlineBytes > 0 ? 3 : 6, `${why}: jobs handed to the engine`)
  }
})

t.test('the front end runs at most INLINE_PER_TURN jobs before the event loop turns', async t => {
  // 16 full queues of small descriptors would otherwise hold every socket and timer for all of them
  const n = 2 * INLINE_PER_TURN + 5
  const rig = new Rig(deviceConfig({ pollUs: 0, queues: [{ mode: 'dedicated', depth: n, priority: 1 }] }))
  t.teardown(() => rig.close())
  await rig.dev.pool.ready()
  const q = rig.dev.allocQueue('dedicated')
  if (q === undefined) return t.fail('no queue')
  const c = rig.collector(q)
  const seen: number[] = []
  const watch = (): void => {
    seen.push(c.count)
    if (c.count < n) setImmediate(watch)
  }
  setImmediate(watch)
  t.equal(c.port.submit(encode(Array.from({ length: n }, (_, i) => ({ opcode: Opcode.NOOP, tag: BigInt(i) }))), 0, n), n)
  await c.waitFor(n)
  const steps = seen.slice(1).map((x, i) => x - seen[i])
  t.ok(steps.every(d => d <= INLINE_PER_TURN), `completions between two turns: ${steps.filter(d => d > 0).join(', ')}`)
  t.ok(seen.some(x => x > 0 && x < n), 'the loop turned with work still queued')
  t.equal(rig.dev.inlineJobs, n)
  t.equal(rig.dev.pool.stats().submitted, 0, 'no NOOP went to the engine')
})

t.test('a doorbell write of eight or more reaches a polling engine that is awake at once', async t => {
  // Awake, the engine costs nothing to hand work to, and the write's descriptors are still
  // in the CPU's cache. (Asleep, the turn's writes go together: the test above.)
  const rig = new Rig(deviceConfig({ engines: 1, pollUs: 60_000_000, inlineBytes: 0 }), 8192, { pollContended: true })
  t.teardown(() => rig.close())
  await rig.dev.pool.ready()
  const q = rig.dev.allocQueue('dedicated')
  if (q === undefined) return t.fail('no queue')
  const c = rig.collector(q)
  t.equal(c.port.submit(encode([{ opcode: Opcode.NOOP, tag: 1n }]), 0, 1), 1)
  await c.waitFor(1)
  // it polls for a minute after its job
  t.ok(rig.dev.pool.pollerAwake, 'polling after its job')
  let before = rig.dev.pool.stats().submitted
  // eight or more: at once
  t.equal(c.port.submit(encode(Array.from({ length: 8 }, (_, i) => ({ opcode: Opcode.NOOP, tag: BigInt(2 + i) }))), 0, 8), 8)
  t.equal(rig.dev.pool.stats().submitted, before + 8, 'all eight in the engine before the write returns')
  await c.waitFor(9)
  // fewer: a pump and a publish each would cost more than they save; they wait for the turn
  before = rig.dev.pool.stats().submitted
  t.equal(c.port.submit(encode([{ opcode: Opcode.NOOP, tag: 10n }]), 0, 1), 1)
  t.equal(rig.dev.pool.stats().submitted, before, 'a single descriptor waits for the turn')
  await c.waitFor(10)
  t.ok(Array.from({ length: 10 }, (_, i) => BigInt(1 + i)).every(tag => c.completions.get(tag)?.[0].status === Status.SUCCESS))
})

t.test('big jobs wait in their queue past a budget of bytes: another queue\'s descriptor is not stuck behind them', async t => {
  // One engine runs its jobs in the order they reached it. Queue 0 floods it with 1 MiB
  // hashes; queue 1's NOOP, written a turn later, must not wait for all of them.
  const rig = new Rig(deviceConfig({ engines: 1, queues: [{ mode: 'dedicated', depth: 64, priority: 1 }, { mode: 'dedicated', depth: 64, priority: 1 }] }))
  t.teardown(() => rig.close())
  await rig.dev.pool.ready()
  const order: number[] = []
  const ports = rig.dev.queues.map((q, i) => q.attach(rig.pasid, rig.pasid, { completion: () => { order.push(i) } }))
  const src = rig.map(2 ** 20)
  rig.store(src, crypto.randomBytes(2 ** 20))
  const dst = rig.map(P)
  const n = 32
  t.equal(ports[0].submit(encode(Array.from({ length: n }, (_, i) => ({ opcode: Opcode.SHA256, src, dst: dst + (i % 128) * 32, size: 2 ** 20 }))), 0, n), n)
  await new Promise(resolve => setImmediate(resolve))
  t.equal(ports[1].submit(encode([{ opcode: Opcode.NOOP }]), 0, 1), 1)
  const deadline = Date.now() + 20000
  while (order.length < n + 1 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 5))
  t.equal(order.length, n + 1)
  const at = order.indexOf(1)
  // the budget is 4 MiB an engine: four hashes started before the NOOP came, one more at most
  // before the arbiter's next round reached its queue
  t.equal(rig.dev.maxJobBytes, 4 * 2 ** 20)
  t.ok(at >= 0 && at <= 6, `the NOOP completed after ${at} of the ${n} hashes, not behind all of them`)
})

t.test('RETRY beyond the ring, QUEUE_DISABLED when isolated, cleared by the admin', async t => {
  const rig = new Rig(deviceConfig({
    queues: [{ mode: 'dedicated', depth: 8, priority: 1 }],
    isolateStrategy: { faults: 2, windowMs: 60000 }
  }))
  t.teardown(() => rig.close())
  const q = rig.dev.allocQueue('dedicated')
  if (q === undefined) return t.fail('no queue')
  const c = rig.collector(q)
  const buf = rig.map(64 * P)
  rig.store(buf, new Uint8Array(64 * P))
  const descs = Array.from({ length: 12 }, (_, i) => ({ opcode: Opcode.SHA256, src: buf, dst: buf, size: 64 * P - 64, tag: BigInt(i) }))
  const n = c.port.submit(encode(descs), 0, 12)
  t.equal(n, 8, 'accepted until the ring was full')
  t.equal(c.port.lastRefusal, Status.RETRY)
  await c.waitFor(8)
  t.equal(rig.dev.allocQueue('dedicated'), undefined, 'the only dedicated queue is taken')
  await run(c, [1, 2, 3].map(i => ({ opcode: Opcode.NOOP + Opcode.SHA256, src: 0x1000, dst: buf, size: 8, tag: BigInt(100 + i) })))
  t.equal(q.state, QueueState.ISOLATED, 'three faults with a strategy of two isolate the queue')
  t.same(c.statuses.map(s => s[0]), [QueueState.ISOLATED])
  t.equal(c.port.submit(encode([{ opcode: Opcode.NOOP, tag: 9n }]), 0, 1), 0)
  t.equal(c.port.lastRefusal, Status.QUEUE_DISABLED)
  t.equal(rig.dev.attributes().isolate, 1)
  t.ok(rig.dev.clearIsolation(q))
  const [again] = await run(c, [{ opcode: Opcode.NOOP, tag: 10n }])
  t.equal(again.status, Status.SUCCESS)
})

t.test('BATCH, FENCE and DRAIN', async t => {
  const rig = new Rig()
  t.teardown(() => rig.close())
  const q = rig.dev.allocQueue('dedicated')
  if (q === undefined) return t.fail('no queue')
  const c = rig.collector(q)
  const buf = rig.map(4 * P)
  rig.store(buf, new Uint8Array(4 * P))
  rig.store(buf, Buffer.from('hello batch'))
  const arr = rig.map(P)
  const members = encode([
    { opcode: Opcode.MEMMOVE, src: buf, dst: buf + P, size: 11, flags: Flag.NOTIFY, tag: 11n },
    { opcode: Opcode.SHA256, src: buf, dst: buf + 2 * P, size: 11, flags: Flag.NOTIFY, tag: 12n },
    { opcode: Opcode.BATCH, src: arr, size: 1, flags: Flag.NOTIFY, tag: 13n },
    { opcode: Opcode.MEMMOVE, src: 0x1000, dst: buf, size: 4, flags: Flag.NOTIFY, tag: 14n }
  ])
  rig.store(arr, members)
  const before = c.count
  c.port.submit(encode([{ opcode: Opcode.BATCH, src: arr, size: 4, tag: 10n }]), 0, 1)
  await c.waitFor(before + 5)
  const [b] = c.completions.get(10n) ?? []
  t.equal(b.status, Status.BATCH_FAILED)
  t.equal(b.value, 2, 'the nested BATCH and the faulting member failed')
  t.equal(c.completions.get(13n)?.[0].status, Status.INVALID_OPCODE)
  t.equal(c.completions.get(14n)?.[0].status, Status.PAGE_FAULT)
  t.same(Buffer.from(rig.load(buf + P, 11)).toString(), 'hello batch')
  t.same(Buffer.from(rig.load(buf + 2 * P, 32)), crypto.createHash('sha256').update('hello batch').digest())

  // FENCE: the FILL waits for the SHA256 before it, so the hash sees the old bytes
  rig.store(buf + 3 * P, new Uint8Array(P).fill(1))
  const done = await run(c, [
    { opcode: Opcode.SHA256, src: buf + 3 * P, dst: buf, size: P, tag: 20n },
    { opcode: Opcode.FILL, flags: Flag.FENCE, dst: buf + 3 * P, size: P, tag: 21n, opArgs: new Uint8Array(16).fill(0, 0, 8) },
    { opcode: Opcode.DRAIN, tag: 22n }
  ])
  t.same(done.map(x => x.status), [Status.SUCCESS, Status.SUCCESS, Status.SUCCESS])
  t.same(Buffer.from(rig.load(buf, 32)), crypto.createHash('sha256').update(Buffer.alloc(P, 1)).digest())
})

t.test('reset: everything in flight completes ABORTED exactly once, queues come back', async t => {
  const rig = new Rig()
  t.teardown(() => rig.close())
  const q = rig.dev.allocQueue('dedicated')
  if (q === undefined) return t.fail('no queue')
  const c = rig.collector(q)
  const buf = rig.map(256 * P)
  rig.store(buf, new Uint8Array(256 * P))
  const descs = Array.from({ length: 100 }, (_, i) => ({ opcode: Opcode.SHA256, src: buf, dst: buf, size: 2 ** 20, tag: BigInt(i) }))
  t.equal(c.port.submit(encode(descs), 0, 100), 100)
  rig.dev.reset()
  await c.waitFor(100)
  await new Promise(resolve => setTimeout(resolve, 50))
  t.equal(c.count, 100, 'one completion each, no more')
  const aborted = [...c.completions.values()].flat().filter(x => x.status === Status.ABORTED).length
  t.ok(aborted > 0, `${aborted} aborted`)
  t.same(c.statuses.map(s => s[0]), [QueueState.RESETTING, QueueState.RUNNING])
  const [after] = await run(c, [{ opcode: Opcode.NOOP, tag: 1000n }])
  t.equal(after.status, Status.SUCCESS)
})

t.test('munmap waits for the engine before the frames go', async t => {
  const rig = new Rig()
  t.teardown(() => rig.close())
  const q = rig.dev.allocQueue('dedicated')
  if (q === undefined) return t.fail('no queue')
  const c = rig.collector(q)
  const buf = rig.map(512 * P)
  rig.store(buf, new Uint8Array(512 * P).fill(9))
  const n = c.port.submit(encode([{ opcode: Opcode.MEMMOVE, src: buf, dst: buf + 256 * P, size: 2 ** 20, tag: 1n }]), 0, 1)
  t.equal(n, 1)
  // the arbiter starts it once the event loop's turn is over; the engine is still on it
  await new Promise(resolve => setImmediate(resolve))
  t.equal(rig.kernel.iommu.accessesInFlight(), 1, 'the device is running it')
  const r = rig.p.mm.munmap(buf, 512 * P)
  t.ok(r.ok)
  t.equal(rig.kernel.iommu.accessesInFlight(), 0, 'the notifier waited for the running access')
  await c.waitFor(1)
  t.equal(c.completions.get(1n)?.[0].status, Status.SUCCESS)
})
