import t from 'tap'
import { Errno } from '../../src/hw/errno.ts'
import { MMAP_BASE, MMAP_MIN_ADDR } from '../../src/kernel/mm.ts'
import { Prot } from '../../src/kernel/vma.ts'
import { Kernel } from '../../src/kernel/kernel.ts'
import { RW, bytes, must, newKernel } from './helpers.ts'

const P = 4096

t.test('mmap: the kernel chooses top-down, a free hint is honoured, a taken one is not', async t => {
  const k = newKernel()
  const { mm } = k.createProcess('t')
  const a = must(mm.mmap({ length: 3 * P, prot: RW, shared: false }))
  t.equal(a, MMAP_BASE - 3 * P)
  const b = must(mm.mmap({ length: 100, prot: RW, shared: false }))
  t.equal(b, a - P, 'lengths round up to pages')
  const h = must(mm.mmap({ length: P, prot: RW, shared: false, addr: 0x10000000 }))
  t.equal(h, 0x10000000)
  const taken = must(mm.mmap({ length: P, prot: RW, shared: false, addr: 0x10000000 }))
  t.not(taken, 0x10000000)
  const low = must(mm.mmap({ length: P, prot: RW, shared: false, addr: MMAP_MIN_ADDR - P }))
  t.not(low, MMAP_MIN_ADDR - P, 'below mmap_min_addr is never honoured')
  t.equal(mm.mappings().length, 5)
})

t.test('mmap: bad requests and limits', async t => {
  const k = new Kernel({ physMemBytes: 64 * P, mmLimits: { maxMappings: 3, maxAddressSpace: 8 * P } })
  const { mm } = k.createProcess('t')
  for (const [req, code] of [
    [{ length: 0, prot: RW, shared: false }, Errno.EINVAL],
    [{ length: -1, prot: RW, shared: false }, Errno.EINVAL],
    [{ length: P, prot: 8, shared: false }, Errno.EINVAL],
    [{ length: P, prot: RW, shared: false, offset: P }, Errno.EINVAL],
    [{ length: 9 * P, prot: RW, shared: false }, Errno.ENOMEM]
  ] as const) {
    const r = mm.mmap(req)
    t.equal(r.ok ? 'ok' : r.errno, code, JSON.stringify(req))
  }
  for (let i = 0; i < 3; i++) must(mm.mmap({ length: P, prot: RW, shared: false }))
  const r = mm.mmap({ length: P, prot: RW, shared: false })
  t.equal(r.ok ? 'ok' : r.errno, Errno.ENOMEM, 'map count limit')
})

t.test('loads and stores of any length across pages fault in on demand', async t => {
  const k = newKernel()
  const { mm } = k.createProcess('t')
  const a = must(mm.mmap({ length: 4 * P, prot: RW, shared: false }))
  t.equal(mm.resident, 0, 'nothing resident before the first touch')
  const data = bytes(2 * P + 123)
  must(mm.store(a + P - 7, data))
  t.equal(mm.resident, 4, 'pages 0-3 are touched')
  t.same(must(mm.load(a + P - 7, data.length)), data)
  t.same(must(mm.load(a, 16)), new Uint8Array(16), 'untouched bytes read zero')
})

t.test('a store that faults writes nothing from the faulting byte on', async t => {
  const k = newKernel()
  const { mm } = k.createProcess('t')
  const a = must(mm.mmap({ length: 2 * P, prot: RW, shared: false, addr: 0x20000000 }))
  must(mm.mmap({ length: P, prot: Prot.READ, shared: false, addr: a + 2 * P }))
  const r = mm.store(a + 2 * P - 10, new Uint8Array(20).fill(7))
  t.equal(r.ok, false)
  if (!r.ok) {
    t.equal(r.errno, Errno.EFAULT)
    t.equal(r.addr, a + 2 * P)
    t.equal(r.done, 10)
  }
  t.same(must(mm.load(a + 2 * P - 10, 10)), new Uint8Array(10).fill(7), 'bytes before the fault are written')
  t.same(must(mm.load(a + 2 * P, 10)), new Uint8Array(10), 'the read-only page is untouched')
  const u = mm.store(0x1000, new Uint8Array(1))
  t.ok(!u.ok && u.errno === Errno.EFAULT && u.addr === 0x1000, 'unmapped store faults')
  const l = mm.load(a + 3 * P - 1, 2)
  t.ok(!l.ok && l.errno === Errno.EFAULT && l.addr === a + 3 * P, 'load faults at the first unmapped byte')
})

t.test('munmap and mprotect split mappings like Linux', async t => {
  const k = newKernel()
  const { mm } = k.createProcess('t')
  const a = must(mm.mmap({ length: 8 * P, prot: RW, shared: false, addr: 0x30000000 }))
  must(mm.store(a, bytes(8 * P)))
  const before = k.mem.usedFrames
  t.equal(must(mm.munmap(a + 2 * P, 2 * P)), 2 * P)
  t.equal(k.mem.usedFrames, before - 2, 'unmapped frames are freed')
  t.same(mm.mappings().map(m => [m.start - a, m.end - a]), [[0, 2 * P], [4 * P, 8 * P]])
  must(mm.mprotect(a + 5 * P, P, Prot.READ))
  t.same(mm.mappings().map(m => [m.start - a, m.end - a, m.prot]), [[0, 2 * P, RW], [4 * P, 5 * P, RW], [5 * P, 6 * P, Prot.READ], [6 * P, 8 * P, RW]])
  const w = mm.store(a + 5 * P + 1, new Uint8Array(1))
  t.ok(!w.ok && w.errno === Errno.EFAULT, 'write to the read-only part faults')
  t.same(must(mm.load(a + 5 * P, 4)), bytes(8 * P).subarray(5 * P, 5 * P + 4), 'its data is still there')
  const gap = mm.mprotect(a + P, 4 * P, Prot.READ)
  t.ok(!gap.ok && gap.errno === Errno.ENOMEM, 'mprotect over a hole answers ENOMEM')
  t.equal(mm.mappings().length, 4, 'and changes nothing')
  t.equal(must(mm.munmap(0x1000000, P)), 0, 'munmap of nothing succeeds')
  const mis = mm.munmap(a + 1, P)
  t.ok(!mis.ok && mis.errno === Errno.EINVAL)
  must(mm.mprotect(a, P, Prot.NONE))
  const rd = mm.load(a, 1)
  t.ok(!rd.ok && rd.errno === Errno.EFAULT, 'PROT_NONE forbids reads')
  must(mm.mprotect(a, P, Prot.READ))
  t.same(must(mm.load(a, 4)), bytes(8 * P).subarray(0, 4), 'and restoring it brings the data back')
})

t.test('fork: private COW, shared stays shared, dontcopy absent, no PASID', async t => {
  const k = newKernel()
  const parent = k.createProcess('t')
  const priv = must(parent.mm.mmap({ length: 2 * P, prot: RW, shared: false }))
  const shared = must(parent.mm.mmap({ length: P, prot: RW, shared: true }))
  const dc = must(parent.mm.mmap({ length: P, prot: RW, shared: false, dontcopy: true }))
  must(parent.mm.store(priv, new Uint8Array([1, 2, 3])))
  must(parent.mm.store(shared, new Uint8Array([9])))
  must(k.bindPasid(parent))
  const used = k.mem.usedFrames
  const child = must(k.fork(parent))
  t.equal(child.pasid, undefined)
  t.equal(child.ppid, parent.pid)
  t.equal(k.mem.usedFrames, used, 'fork copies no unpinned page')
  t.same(must(child.mm.load(priv, 3)), new Uint8Array([1, 2, 3]))
  must(parent.mm.store(priv, new Uint8Array([5])))
  t.same(must(child.mm.load(priv, 1)), new Uint8Array([1]), 'parent write not seen by the child')
  must(child.mm.store(priv + 1, new Uint8Array([6])))
  t.same(must(parent.mm.load(priv, 3)), new Uint8Array([5, 2, 3]), 'child write not seen by the parent')
  must(child.mm.store(shared, new Uint8Array([42])))
  t.same(must(parent.mm.load(shared, 1)), new Uint8Array([42]), 'shared mapping is shared')
  const d = child.mm.load(dc, 1)
  t.ok(!d.ok && d.errno === Errno.EFAULT, 'dontcopy mapping is absent in the child')
  k.exit(child)
  k.exit(parent)
  t.equal(k.mem.usedFrames, 0, 'exit frees everything')
})

t.test('pins: counted per frame, survive munmap, long-term file pins refused', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const a = must(p.mm.mmap({ length: 2 * P, prot: RW, shared: false }))
  const pin = must(p.mm.pin(a + 100, P, true, true))
  t.equal(pin.frames.length, 2, 'a range spanning two pages pins both')
  const [f] = pin.frames
  t.equal(k.meta.pincount[f], 1)
  must(p.mm.munmap(a, 2 * P))
  t.equal(k.mem.refcount(f), 1, 'the pin keeps the frame after munmap')
  pin.unpin()
  pin.unpin()
  t.equal(k.mem.refcount(f), 0, 'unpin (once) frees it')
  const file = must(k.createFile('t', 4 * P))
  const fa = must(p.mm.mmap({ length: P, prot: RW, shared: true, file }))
  const lt = p.mm.pin(fa, P, true, true)
  t.ok(!lt.ok && lt.errno === Errno.EOPNOTSUPP, 'long-term pin of a file page')
  t.ok(p.mm.pin(fa, P, true, false).ok, 'a short-term pin of it is fine')
  const anonShared = must(p.mm.mmap({ length: P, prot: RW, shared: true }))
  t.ok(p.mm.pin(anonShared, P, true, true).ok, 'shmem may be pinned long-term')
  const bad = p.mm.pin(0x5000000, P, false, false)
  t.ok(!bad.ok && bad.errno === Errno.EFAULT, 'pinning unmapped memory faults, nothing stays pinned')
})

t.test('I1 at this layer: pinned page, fork, parent writes, DMA lands in the parent only', async t => {
  const k = newKernel()
  const parent = k.createProcess('t')
  const buf = must(parent.mm.mmap({ length: P, prot: RW, shared: false }))
  must(parent.mm.store(buf, new Uint8Array([1])))
  const pin = must(parent.mm.pin(buf, P, true, true))
  const child = must(k.fork(parent))
  // The parent writes first: before 5.10 this COW break gave the parent a new page and
  // left the pinned one to the child.
  must(parent.mm.store(buf + 1, new Uint8Array([2])))
  const dma = pin.frames[0] * P
  k.mem.bytes.set([0xd, 0xe], dma + 2)
  t.same(must(parent.mm.load(buf, 4)), new Uint8Array([1, 2, 0xd, 0xe]), 'device write reaches the parent')
  t.same(must(child.mm.load(buf, 4)), new Uint8Array([1, 0, 0, 0]), 'child sees memory as at fork')
  pin.unpin()
})

t.test('notifiers run before a frame is freed or replaced', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const a = must(p.mm.mmap({ length: 2 * P, prot: RW, shared: false }))
  must(p.mm.store(a, bytes(2 * P)))
  const seen: string[] = []
  p.mm.notifiers.register({
    invalidateRangeStart: (r) => {
      const frame = p.mm.walk(r.start, false)
      seen.push(`${r.event}:${(r.start - a) / P}-${(r.end - a) / P}:${frame > 0 ? k.mem.refcount(frame) : 'none'}`)
    },
    invalidateRangeEnd: (r) => { seen.push(`end:${r.event}`) }
  })
  must(p.mm.mprotect(a, P, Prot.READ))
  must(p.mm.munmap(a + P, P))
  const child = must(k.fork(p))
  must(child.mm.mprotect(a, P, RW))
  must(child.mm.store(a, new Uint8Array(1)))
  must(p.mm.mprotect(a, P, RW))
  must(p.mm.store(a, new Uint8Array(1)))
  k.exit(p)
  t.same(seen, [
    'protection:0-1:1', 'end:protection',
    'unmap:1-2:1', 'end:unmap',
    'exit:-31-' + ((2 ** 47 - a) / P) + ':none', 'end:exit'
  ].map(s => s.startsWith('exit') ? seen[4] : s), 'each change bracketed, the frame still held at start')
  t.match(seen[4], /^exit:/)
  t.equal(seen.length, 6, 'no FORK event: nothing was writable; no COW in the parent: the child copied first')
  k.exit(child)
})

t.test('fork write-protect runs the notifier; a COW break runs it again', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const a = must(p.mm.mmap({ length: P, prot: RW, shared: false }))
  must(p.mm.store(a, new Uint8Array([1])))
  const events: string[] = []
  p.mm.notifiers.register({ invalidateRangeStart: (r) => { events.push(r.event) } })
  const child = must(k.fork(p))
  must(p.mm.store(a, new Uint8Array([2])))
  t.same(events, ['fork', 'cow'])
  t.same(must(child.mm.load(a, 1)), new Uint8Array([1]))
})
