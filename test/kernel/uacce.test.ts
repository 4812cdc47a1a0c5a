import t from 'tap'
import crypto from 'node:crypto'
import zlib from 'node:zlib'
import { DEFAULT_DEVICES } from '../../src/hw/device-config.ts'
import { CR_SIZE, DESC_SIZE, FaultInfo, Flag, Opcode, Status, makeDescriptor, readCompletion, writeDescriptor, type Descriptor } from '../../src/hw/descriptor.ts'
import { Errno } from '../../src/hw/errno.ts'
import { Kernel } from '../../src/kernel/kernel.ts'
import { Uacce } from '../../src/kernel/uacce.ts'
import { Prot } from '../../src/kernel/vma.ts'
import { must } from './helpers.ts'

const P = 4096
const RW = Prot.READ | Prot.WRITE

function setup (): { k: Kernel, u: Uacce } {
  const k = new Kernel({ physMemBytes: 4096 * P })
  const configs = structuredClone(DEFAULT_DEVICES).map(c => ({ ...c, engines: 1 }))
  const u = new Uacce(k, configs)
  return { k, u }
}

function encode (descs: Array<Partial<Descriptor> & { opcode: number }>): Uint8Array {
  const buf = new Uint8Array(descs.length * DESC_SIZE)
  descs.forEach((d, i) => writeDescriptor(buf, i * DESC_SIZE, makeDescriptor(d)))
  return buf
}

function records (out: Uint8Array): ReturnType<typeof readCompletion>[] {
  const r = []
  for (let i = 0; i < out.length; i += CR_SIZE) r.push(readCompletion(out, i))
  return r
}

t.test('dedicated queues are finite: EBUSY, and available_instances exact after release', async t => {
  const { k, u } = setup()
  t.teardown(() => u.close())
  const p = k.createProcess('a')
  const made = []
  for (let i = 0; i < 4; i++) made.push(must(u.createQueue(p, 'wd0', 'dedicated')))
  const busy = u.createQueue(p, 'wd0', 'dedicated')
  t.ok(!busy.ok && busy.errno === Errno.EBUSY)
  t.equal(u.device('wd0')?.dev.attributes().available_instances, 0)
  t.ok(u.createQueue(p, 'wd0', 'shared').ok, 'shared queues are never EBUSY')
  u.releaseQueue(made[0])
  t.equal(u.device('wd0')?.dev.attributes().available_instances, 1)
  t.ok(u.createQueue(p, 'wd0', 'dedicated').ok)
  const nosva = u.createQueue(p, 'wd1', 'dedicated')
  t.ok(!nosva.ok && nosva.errno === Errno.EOPNOTSUPP)
  for (let i = 0; i < 20; i++) t.equal(must(u.createQueue(p, 'wd1')).kind, 'sync_only')
  const b = u.bind(p, 'wd1')
  t.ok(!b.ok && b.errno === Errno.EOPNOTSUPP, 'binding a device without SVA')
  t.equal(must(u.bind(p, 'wd0')), p.pasid)
  k.exit(p)
  t.equal(u.queues.size, 0, 'exit releases every queue')
  t.equal(u.device('wd0')?.dev.attributes().available_instances, 4)
})

t.test('mediated SHA256 and DEFLATE on a sync_only queue, records in memory, faults in tenant addresses', async t => {
  const { k, u } = setup()
  t.teardown(() => u.close())
  const p = k.createProcess('a')
  const q = must(u.createQueue(p, 'wd1'))
  const buf = must(p.mm.mmap({ length: 16 * P, prot: RW, shared: false }))
  const data = crypto.randomBytes(3 * P + 17)
  must(p.mm.store(buf + 3, data))
  const cr = buf + 15 * P
  const out = must(await u.submit(q, encode([
    { opcode: Opcode.SHA256, src: buf + 3, dst: buf + 8 * P, size: data.length, tag: 1n, flags: Flag.COMPLETION_RECORD, completionAddr: cr },
    { opcode: Opcode.DEFLATE, src: buf + 3, dst: buf + 9 * P + 5, size: data.length, dstSize: 5 * P, tag: 2n, opArgs: new Uint8Array(16).fill(6, 0, 1) },
    { opcode: Opcode.MEMMOVE, src: 0x1000, dst: buf, size: 8, tag: 3n },
    { opcode: Opcode.FILL, dst: buf + 14 * P + 100, size: 8, tag: 4n }
  ])))
  const [sha, def, nomap, ok] = records(out)
  t.equal(sha.status, Status.SUCCESS)
  t.same(Buffer.from(must(p.mm.load(buf + 8 * P, 32))), crypto.createHash('sha256').update(data).digest())
  t.equal(readCompletion(must(p.mm.load(cr, 32))).status, Status.SUCCESS, 'the record landed in memory')
  t.equal(def.status, Status.SUCCESS)
  const want = zlib.deflateRawSync(data, { level: 6 })
  t.same(Buffer.from(must(p.mm.load(buf + 9 * P + 5, def.value))), want)
  t.equal(nomap.status, Status.PAGE_FAULT)
  t.equal(nomap.faultAddr, 0x1000, 'the fault address is the tenant\'s, never an IOVA')
  t.equal(nomap.faultInfo, FaultInfo.NO_MAPPING)
  t.equal(ok.status, Status.SUCCESS)
  t.equal(u.device('wd1')?.domain?.mappedBytes, 0, 'every IOVA mapping was undone')
  t.equal(k.meta.pincount.reduce((a, b) => a + b, 0), 0, 'every pin was released')
  const ro = must(p.mm.mmap({ length: P, prot: Prot.READ, shared: false }))
  const [w] = records(must(await u.submit(q, encode([{ opcode: Opcode.FILL, dst: ro + 8, size: 8, tag: 9n }]))))
  t.equal(w.status, Status.PAGE_FAULT, 'a write into a read-only mapping is refused')
  t.equal(w.faultAddr, ro + 8)
  t.equal(w.faultInfo, FaultInfo.WRITE)
  const bad = await u.submit(q, new Uint8Array(65))
  t.ok(!bad.ok && bad.errno === Errno.EINVAL, 'a body that is not whole descriptors')
})

t.test('a mediated BATCH: members read by the kernel, each checked and rewritten', async t => {
  const { k, u } = setup()
  t.teardown(() => u.close())
  const p = k.createProcess('a')
  const q = must(u.createQueue(p, 'wd1'))
  const buf = must(p.mm.mmap({ length: 8 * P, prot: RW, shared: false }))
  must(p.mm.store(buf, Buffer.from('abc')))
  must(p.mm.store(buf + 4 * P, encode([
    { opcode: Opcode.MEMMOVE, src: buf, dst: buf + P, size: 3, tag: 11n, flags: Flag.COMPLETION_RECORD, completionAddr: buf + 6 * P },
    { opcode: Opcode.MEMMOVE, src: 0x1000, dst: buf, size: 3, tag: 12n, flags: Flag.COMPLETION_RECORD, completionAddr: buf + 6 * P + 32 },
    { opcode: Opcode.SHA256, src: buf, dst: buf + 2 * P, size: 3, tag: 13n }
  ])))
  const [b] = records(must(await u.submit(q, encode([{ opcode: Opcode.BATCH, src: buf + 4 * P, size: 3, tag: 10n }]))))
  t.equal(b.status, Status.BATCH_FAILED)
  t.equal(b.value, 1)
  t.same(Buffer.from(must(p.mm.load(buf + P, 3))).toString(), 'abc')
  t.same(Buffer.from(must(p.mm.load(buf + 2 * P, 32))), crypto.createHash('sha256').update('abc').digest())
  const r1 = readCompletion(must(p.mm.load(buf + 6 * P, 32)))
  const r2 = readCompletion(must(p.mm.load(buf + 6 * P + 32, 32)))
  t.same([r1.status, r1.tag], [Status.SUCCESS, 11n], 'member record written by the device')
  t.same([r2.status, r2.tag, r2.faultAddr], [Status.PAGE_FAULT, 12n, 0x1000], 'refused member record written by the kernel')
})

t.test('many sync-only tenants share one hardware queue, each with its own results', async t => {
  const { k, u } = setup()
  t.teardown(() => u.close())
  const tenants = Array.from({ length: 12 }, (_, i) => {
    const p = k.createProcess(`t${i}`)
    const q = must(u.createQueue(p, 'wd1'))
    const buf = must(p.mm.mmap({ length: 4 * P, prot: RW, shared: false }))
    const data = crypto.randomBytes(P + i)
    must(p.mm.store(buf, data))
    return { p, q, buf, data }
  })
  const results = await Promise.all(tenants.map(async x => {
    const descs = Array.from({ length: 8 }, (_, j) => ({ opcode: Opcode.SHA256, src: x.buf, dst: x.buf + 2 * P + j * 32, size: x.data.length, tag: BigInt(j) }))
    return records(must(await u.submit(x.q, encode(descs))))
  }))
  for (const [i, x] of tenants.entries()) {
    t.ok(results[i].every((r, j) => r.status === Status.SUCCESS && r.tag === BigInt(j)), `tenant ${i}: in order`)
    const digest = crypto.createHash('sha256').update(x.data).digest()
    for (let j = 0; j < 8; j++) t.same(Buffer.from(must(x.p.mm.load(x.buf + 2 * P + j * 32, 32))), digest)
  }
})

t.test('I1 on the mediated path: fork while a submission is in flight', async t => {
  const { k, u } = setup()
  t.teardown(() => u.close())
  const parent = k.createProcess('a')
  const q = must(u.createQueue(parent, 'wd1'))
  const buf = must(parent.mm.mmap({ length: 600 * P, prot: RW, shared: false }))
  must(parent.mm.store(buf, new Uint8Array(600 * P).fill(1)))
  const big = 256 * P
  const pending = u.submit(q, encode([
    { opcode: Opcode.FILL, dst: buf + 300 * P, size: big, tag: 1n, opArgs: new Uint8Array(16).fill(7, 0, 8) }
  ]))
  const child = must(k.fork(parent))
  must(parent.mm.store(buf + 300 * P, new Uint8Array([1])))
  const [r] = records(must(await pending))
  t.equal(r.status, Status.SUCCESS)
  t.same(must(parent.mm.load(buf + 300 * P + 1, 3)), new Uint8Array([7, 7, 7]), 'the device wrote the parent\'s memory')
  t.ok(must(child.mm.load(buf + 300 * P, big)).every(b => b === 1), 'the child sees memory as at fork')
  t.equal(child.pasid, undefined)
  t.equal([...u.queues.values()].filter(x => x.process === child).length, 0, 'the child has no queue')
})

t.test('I3: fsync of a file mapping while the device writes it: never a torn page', async t => {
  const { k, u } = setup()
  t.teardown(() => u.close())
  const p = k.createProcess('a')
  const q = must(u.createQueue(p, 'wd1'))
  const file = must(k.createFile('a', 64 * P))
  const fa = must(p.mm.mmap({ length: 64 * P, prot: RW, shared: true, file }))
  must(p.mm.store(fa, new Uint8Array(64 * P).fill(0xaa)))
  const src = must(p.mm.mmap({ length: 64 * P, prot: RW, shared: false }))
  must(p.mm.store(src, new Uint8Array(64 * P).fill(0x55)))
  for (let round = 0; round < 4; round++) {
    const fill = round % 2 === 0 ? 0x55 : 0xaa
    must(p.mm.store(src, new Uint8Array(64 * P).fill(fill)))
    const write = u.submit(q, encode([{ opcode: Opcode.MEMMOVE, src, dst: fa, size: 64 * P, tag: 1n }]))
    const sync = file.fsync()
    await Promise.all([write, sync])
    await file.fsync()
    for (let pg = 0; pg < 64; pg++) {
      const page = file.backing.get(pg)
      t.ok(page !== undefined && (page.every(b => b === 0x55) || page.every(b => b === 0xaa)), `round ${round} page ${pg} whole`)
    }
  }
})

t.test('releasing a queue with work in flight: every descriptor still answered', async t => {
  const { k, u } = setup()
  t.teardown(() => u.close())
  const p = k.createProcess('a')
  const q = must(u.createQueue(p, 'wd1'))
  const buf = must(p.mm.mmap({ length: 300 * P, prot: RW, shared: false }))
  must(p.mm.store(buf, new Uint8Array(300 * P)))
  const descs = Array.from({ length: 40 }, (_, i) => ({ opcode: Opcode.SHA256, src: buf, dst: buf + 290 * P, size: 256 * P, tag: BigInt(i) }))
  const pending = u.submit(q, encode(descs))
  u.releaseQueue(q)
  const rs = records(must(await pending))
  t.equal(rs.length, 40)
  t.ok(rs.every(r => r.status === Status.SUCCESS || r.status === Status.ABORTED))
  t.ok(rs.some(r => r.status === Status.ABORTED))
  const after = records(must(await u.submit(q, encode([{ opcode: Opcode.NOOP, tag: 1n }]))))
  t.equal(after[0].status, Status.QUEUE_DISABLED)
  t.equal(k.meta.pincount.reduce((a, b) => a + b, 0), 0, 'no pin left behind')
})

t.test('a mediated submission on an SVA queue rides the doorbell for the tenant', async t => {
  const { k, u } = setup()
  t.teardown(() => u.close())
  const p = k.createProcess('a')
  const q = must(u.createQueue(p, 'wd0', 'shared'))
  const buf = must(p.mm.mmap({ length: 2 * P, prot: RW, shared: false }))
  must(p.mm.store(buf, Buffer.from('xyz')))
  const [r] = records(must(await u.submit(q, encode([{ opcode: Opcode.CRC32, src: buf, size: 3, tag: 5n }]))))
  t.equal(r.status, Status.SUCCESS)
  t.equal(r.value, zlib.crc32 !== undefined ? zlib.crc32('xyz') : r.value)
})
