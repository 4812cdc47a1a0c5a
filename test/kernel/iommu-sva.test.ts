import t from 'tap'
import { Errno } from '../../src/hw/errno.ts'
import { Iommu, Xlate } from '../../src/hw/iommu.ts'
import { IovaDomain } from '../../src/hw/iova-domain.ts'
import { Prot } from '../../src/kernel/vma.ts'
import { RW, bytes, hold, must, newKernel } from './helpers.ts'

const P = 4096

t.test('PASIDs: one per address space, freed at exit, never inherited', async t => {
  const k = newKernel()
  const a = k.createProcess('t')
  const b = k.createProcess('t')
  const pa = must(k.bindPasid(a))
  t.equal(must(k.bindPasid(a)), pa, 'binding twice gives the same PASID')
  const pb = must(k.bindPasid(b))
  t.not(pa, pb)
  const child = must(k.fork(a))
  t.equal(child.pasid, undefined)
  t.equal(k.iommu.boundPasids, 2)
  k.exit(a)
  t.equal(k.iommu.isBound(pa), false, 'exit frees the PASID')
  t.equal(k.iommu.translate(pa, 0x7000_0000_0000, false), Xlate.NO_MAPPING, 'a freed PASID translates nothing')
  k.exit(b)
  k.exit(child)
})

t.test('translate through an IOTLB: hits, misses, faults by kind', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const pasid = must(k.bindPasid(p))
  const tlb = k.iommu.createIotlb('dev0')
  const a = must(p.mm.mmap({ length: 2 * P, prot: RW, shared: false }))
  const ro = must(p.mm.mmap({ length: P, prot: Prot.READ, shared: false }))
  t.equal(tlb.translate(pasid, a, false), Xlate.NOT_PRESENT, 'valid mapping, page not present')
  t.equal(tlb.translate(pasid, 0x1000, false), Xlate.NO_MAPPING)
  must(p.mm.store(a, new Uint8Array([1])))
  const frame = tlb.translate(pasid, a + 5, true)
  t.ok(frame > 0)
  t.equal(tlb.misses, 3)
  t.equal(tlb.translate(pasid, a + 100, true), frame)
  t.equal(tlb.translate(pasid, a + 200, false), frame, 'a write entry serves reads')
  t.equal(tlb.hits, 2)
  must(p.mm.load(ro, 1))
  t.equal(tlb.translate(pasid, ro, true), Xlate.PERMISSION)
  t.ok(tlb.translate(pasid, ro, false) > 0)
  t.equal(tlb.translate(pasid, ro, true), Xlate.PERMISSION, 'a read entry never serves writes')
})

t.test('notifiers invalidate the IOTLB: munmap, mprotect, COW', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const pasid = must(k.bindPasid(p))
  const tlb = k.iommu.createIotlb('dev0')
  const a = must(p.mm.mmap({ length: 2 * P, prot: RW, shared: false }))
  must(p.mm.store(a, bytes(2 * P)))
  t.ok(tlb.translate(pasid, a, true) > 0)
  t.ok(tlb.translate(pasid, a + P, true) > 0)
  t.equal(tlb.size, 2)
  must(p.mm.mprotect(a, P, Prot.READ))
  t.equal(tlb.size, 1, 'mprotect dropped the entry')
  t.equal(tlb.translate(pasid, a, true), Xlate.PERMISSION, 'and the write right is gone')
  must(p.mm.munmap(a + P, P))
  t.equal(tlb.translate(pasid, a + P, false), Xlate.NO_MAPPING, 'munmap: no stale frame')
  const b = must(p.mm.mmap({ length: P, prot: RW, shared: false }))
  must(p.mm.store(b, new Uint8Array([1])))
  const before = tlb.translate(pasid, b, false)
  must(k.fork(p))
  must(p.mm.store(b, new Uint8Array([2])))
  const after = tlb.translate(pasid, b, false)
  t.not(after, before, 'after a COW break the device sees the new frame, not the child\'s')
})

t.test('page requests: a valid not-present page is served, anything else is invalid', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const pasid = must(k.bindPasid(p))
  const a = must(p.mm.mmap({ length: P, prot: RW, shared: false }))
  const ro = must(p.mm.mmap({ length: P, prot: Prot.READ, shared: false }))
  t.equal(await k.iommu.pageRequest(pasid, a, true), true)
  t.ok(k.iommu.translate(pasid, a, true) > 0)
  t.equal(await k.iommu.pageRequest(pasid, ro, true), false, 'write to a read-only mapping')
  t.equal(await k.iommu.pageRequest(pasid, 0x2000, false), false, 'no mapping')
  t.equal(await k.iommu.pageRequest(999, a, false), false, 'unknown PASID')
  k.iommu.reportFault(pasid, 0x2000, true, Xlate.NO_MAPPING, 'dev0', false)
  t.match(p.mm.faultQueue, [{ pasid, addr: 0x2000, write: true, reason: 'no_mapping', served: false, device: 'dev0' }])
})

t.test('a device access holds its frames; the notifier waits for a running one', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const pasid = must(k.bindPasid(p))
  const tlb = k.iommu.createIotlb('dev0')
  const a = must(p.mm.mmap({ length: 2 * P, prot: RW, shared: false }))
  // the two pages faulted in apart, with another mapping's page between them: their
  // frames are not adjacent
  must(p.mm.store(a, bytes(P)))
  const between = must(p.mm.mmap({ length: P, prot: RW, shared: false }))
  must(p.mm.store(between, bytes(P)))
  must(p.mm.store(a + P, bytes(P)))
  const acc = k.iommu.beginAccess(pasid)
  const h = hold(k, tlb, acc, a + 10, P, true)
  t.same({ done: h.done, code: h.code }, { done: P, code: 0 })
  const frames = h.frames
  t.equal(frames.length, 2)
  t.not(frames[1], frames[0] + 1, 'frames apart')
  t.same(h.sg, { addrs: [frames[0] * P + 10, frames[1] * P], lens: [P - 10, 10] }, 'a segment per run of adjacent frames, the first from the offset')
  // pages whose frames are adjacent make one segment
  const c = must(p.mm.mmap({ length: 3 * P, prot: RW, shared: false }))
  must(p.mm.store(c, bytes(3 * P)))
  const other = k.iommu.beginAccess(pasid)
  const run = hold(k, tlb, other, c + 5, 3 * P - 5, false)
  t.same(run.frames, [run.frames[0], run.frames[0] + 1, run.frames[0] + 2], 'faulted in together: adjacent frames')
  t.same(run.sg, { addrs: [run.frames[0] * P + 5], lens: [3 * P - 5] }, 'one segment for the run')
  other.release()
  // The device is running: the notifier must wait for it before the frames go.
  acc.state = 'running'
  let waited = false
  acc.wait = () => {
    // the device's last write lands before munmap goes on
    k.mem.bytes[frames[0] * P] = 0xee
    waited = true
    acc.release()
  }
  const freeBefore = k.mem.freeFrames
  must(p.mm.munmap(a, 2 * P))
  t.ok(waited, 'munmap waited for the access')
  t.equal(k.mem.freeFrames, freeBefore + 2, 'frames freed only after the access released them')
  t.equal(k.iommu.accessesInFlight(), 0)
})

t.test('no frame is freed or reused while a device access holds it', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const pasid = must(k.bindPasid(p))
  const tlb = k.iommu.createIotlb('dev0')
  const a = must(p.mm.mmap({ length: P, prot: RW, shared: false }))
  must(p.mm.store(a, new Uint8Array([7])))
  const acc = k.iommu.beginAccess(pasid)
  const frames = hold(k, tlb, acc, a, 1, false).frames
  // Still translating: the notifier marks it stale instead of waiting.
  must(p.mm.munmap(a, P))
  t.equal(acc.stale, true)
  t.equal(k.mem.refcount(frames[0]), 1, 'the access alone holds the frame')
  const reuse = must(p.mm.mmap({ length: P, prot: RW, shared: false }))
  must(p.mm.store(reuse, new Uint8Array([1])))
  t.not(p.mm.walk(reuse, false), frames[0], 'the held frame is not handed out again')
  t.equal(k.mem.bytes[frames[0] * P], 7, 'and keeps its bytes')
  acc.release()
  t.equal(k.mem.refcount(frames[0]), 0)
})

t.test('a released access handed out again starts empty, under its new context', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const q = k.createProcess('u')
  const pasid = must(k.bindPasid(p))
  const other = must(k.bindPasid(q))
  const tlb = k.iommu.createIotlb('dev0')
  const a = must(p.mm.mmap({ length: 2 * P, prot: RW, shared: false }))
  must(p.mm.store(a, bytes(2 * P)))
  const first = k.iommu.beginAccess(pasid)
  const { frames } = hold(k, tlb, first, a, 2 * P, false)
  first.release()
  t.same(frames.map(f => k.mem.refcount(f)), [1, 1], 'the release dropped its references (the mapping keeps one)')
  const again = k.iommu.beginAccess(other)
  t.equal(again, first, 'the same object, reused')
  t.equal(again.ctx, other)
  t.equal(again.state, 'translating')
  t.equal(again.nframes, 0)
  t.notOk(again.overlaps(a, a + 2 * P), 'the old ranges are gone')
  t.equal(k.iommu.accessesInFlight(pasid), 0)
  t.equal(k.iommu.accessesInFlight(other), 1)
  // a notifier on the old context finds nothing to wait for
  let waited = false
  again.state = 'running'
  again.wait = () => { waited = true }
  must(p.mm.munmap(a, 2 * P))
  t.notOk(waited)
  again.release()
  again.release()
  t.equal(k.iommu.accessesInFlight(), 0, 'a second release changes nothing')
})

t.test('IOVA domains attached to the IOMMU: translate and invalidate on unmap', async t => {
  const k = newKernel()
  const tlb = k.iommu.createIotlb('dev1')
  const d = new IovaDomain(1, k.mem)
  const ctx = k.iommu.attachDomain(d)
  t.equal(ctx, Iommu.domainCtx(1))
  const f = must(k.mem.alloc())
  const iova = must(d.map(undefined, [f], 1))
  t.equal(tlb.translate(ctx, iova, false), f)
  t.equal(tlb.translate(ctx, iova, true), Xlate.PERMISSION, 'read-only map')
  t.equal(tlb.translate(ctx, iova, false), f)
  t.equal(tlb.hits, 1)
  must(d.unmap(iova, P))
  t.equal(tlb.translate(ctx, iova, false), Xlate.NO_MAPPING, 'unmap flushed the IOTLB')
  k.mem.put(f)
  const e = d.unmap(iova, P)
  t.ok(!e.ok && e.errno === Errno.ENOENT)
  k.iommu.detachDomain(d)
})

t.test('IOTLB is bounded and evicts oldest first', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const pasid = must(k.bindPasid(p))
  const tlb = k.iommu.createIotlb('small', 4)
  const a = must(p.mm.mmap({ length: 8 * P, prot: RW, shared: false }))
  must(p.mm.store(a, new Uint8Array(8 * P)))
  for (let i = 0; i < 8; i++) tlb.translate(pasid, a + i * P, false)
  t.equal(tlb.size, 4)
  tlb.translate(pasid, a + 7 * P, false)
  t.equal(tlb.hits, 1, 'the newest is still there')
  tlb.translate(pasid, a, false)
  t.equal(tlb.misses, 9, 'the oldest was evicted')
})

t.test('IOTLB is set-associative: a power of two of sets, right under thrashing, flushed by range', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const q = k.createProcess('t')
  const pp = must(k.bindPasid(p))
  const pq = must(k.bindPasid(q))
  const tlb = k.iommu.createIotlb('odd', 10)
  t.equal(tlb.capacity, 10, '10 entries: 2 sets (a power of two) of 5 ways')
  const a = must(p.mm.mmap({ length: 40 * P, prot: RW, shared: false }))
  const b = must(q.mm.mmap({ length: 40 * P, prot: RW, shared: false }))
  must(p.mm.store(a, bytes(40 * P)))
  must(q.mm.store(b, bytes(40 * P)))
  // a working set over three times the cache, two contexts interleaved, twice over
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 40; i++) {
      t.equal(tlb.translate(pp, a + i * P, i % 2 === 0), k.iommu.translate(pp, a + i * P, false))
      t.equal(tlb.translate(pq, b + i * P, false), k.iommu.translate(pq, b + i * P, false))
    }
  }
  t.ok(tlb.size <= tlb.capacity, `size ${tlb.size} within capacity`)
  t.equal(tlb.hits + tlb.misses, 160)
  // a small range is probed page by page, a large one scanned: both drop only that context
  tlb.flushAll()
  for (let i = 0; i < 3; i++) {
    tlb.translate(pp, a + i * P, false)
    tlb.translate(pq, b + i * P, false)
  }
  t.equal(tlb.size, 6)
  tlb.flushRange(pp, a + P, a + 2 * P)
  t.equal(tlb.size, 5, 'one page of one context')
  tlb.flushRange(pq, 0, 2 ** 47)
  t.equal(tlb.size, 2, 'every page of the other context')
  const misses = tlb.misses
  tlb.translate(pp, a, false)
  tlb.translate(pp, a + 2 * P, false)
  t.equal(tlb.misses, misses, 'what was not flushed still hits')
})
