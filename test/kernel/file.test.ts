import t from 'tap'
import { Errno } from '../../src/hw/errno.ts'
import { Prot } from '../../src/kernel/vma.ts'
import { RW, bytes, hold, must, newKernel } from './helpers.ts'

const P = 4096

t.test('files: page cache, shared and private mappings, fsync to the backing store', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const file = must(k.createFile('t', 3 * P))
  must(file.write(10, new Uint8Array([1, 2, 3])))
  t.equal(await file.fsync(), 1)
  t.same(file.backing.get(0)?.subarray(10, 13), new Uint8Array([1, 2, 3]))
  const shared = must(p.mm.mmap({ length: 3 * P, prot: RW, shared: true, file }))
  const priv = must(p.mm.mmap({ length: 3 * P, prot: RW, shared: false, file }))
  t.same(must(p.mm.load(shared + 10, 3)), new Uint8Array([1, 2, 3]))
  must(p.mm.store(shared + P, new Uint8Array([9])))
  t.same([...file.dirty], [1], 'a store through a shared mapping dirties the page')
  must(p.mm.store(priv + 10, new Uint8Array([7])))
  t.same(must(file.read(10, 1)), new Uint8Array([1]), 'a private store never reaches the file')
  t.same(must(p.mm.load(priv + P, 1)), new Uint8Array([9]), 'a private mapping sees the file until it writes')
  t.equal(await file.fsync(), 1)
  t.equal(file.backing.get(1)?.[0], 9)
  t.same([...file.dirty], [])
  must(p.mm.store(shared + P + 1, new Uint8Array([8])))
  t.same([...file.dirty], [1], 'writeback write-protected the page: the next store dirties it again')
  const past = p.mm.load(shared + 3 * P, 1)
  t.ok(!past.ok && past.errno === Errno.EFAULT, 'outside the mapping')
  const big = must(p.mm.mmap({ length: 4 * P, prot: RW, shared: true, file }))
  const eof = p.mm.load(big + 3 * P, 1)
  t.ok(!eof.ok && eof.errno === Errno.EFAULT, 'a page past the end of the file faults (SIGBUS)')
  t.equal(file.write(k.maxFileBytes, new Uint8Array(1)).ok, false, 'EFBIG past the size limit')
})

t.test('stable pages: writeback waits for a DMA pin, never writes a torn page', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const file = must(k.createFile('t', 2 * P))
  const a = must(p.mm.mmap({ length: 2 * P, prot: RW, shared: true, file }))
  must(p.mm.store(a, new Uint8Array(2 * P).fill(1)))
  const pin = must(p.mm.pin(a, P, true, false))
  const dma = pin.frames[0] * P
  k.mem.bytes.fill(2, dma, dma + P / 2)
  let done = false
  const sync = file.fsync().then(n => { done = true; return n })
  await new Promise(resolve => setImmediate(resolve))
  t.equal(done, false, 'fsync waits while the device holds the page pinned for write')
  k.mem.bytes.fill(2, dma + P / 2, dma + P)
  pin.unpin()
  t.equal(await sync, 2)
  t.ok(file.backing.get(0)?.every(b => b === 2), 'the written-back page is whole: all new')
  t.ok(file.backing.get(1)?.every(b => b === 1))
  t.same([...file.dirty], [], 'the unpin dirtied it, and the writeback that followed cleaned it')
})

t.test('writeback write-protect waits for a running device write through the notifier', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const pasid = must(k.bindPasid(p))
  const tlb = k.iommu.createIotlb('dev0')
  const file = must(k.createFile('t', P))
  const a = must(p.mm.mmap({ length: P, prot: RW, shared: true, file }))
  must(p.mm.store(a, new Uint8Array(P).fill(1)))
  const acc = k.iommu.beginAccess(pasid)
  const h = hold(k, tlb, acc, a, P, true)
  t.same({ done: h.done, code: h.code }, { done: P, code: 0 })
  const frames = h.frames
  acc.state = 'running'
  k.mem.bytes.fill(3, frames[0] * P, frames[0] * P + 100)
  acc.wait = () => {
    k.mem.bytes.fill(3, frames[0] * P + 100, frames[0] * P + P)
    acc.release()
  }
  await file.fsync()
  t.ok(file.backing.get(0)?.every(b => b === 3), 'the device write finished before the page was written')
  t.equal(tlb.translate(pasid, a, true) < 0, true, 'and the device lost its writable translation')
  t.ok(await k.iommu.pageRequest(pasid, a, true), 'a page request makes it writable and dirty again')
  t.same([...file.dirty], [0])
})

t.test('mprotect to read-only of a file mapping then writes fault', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const file = must(k.createFile('t', P))
  const a = must(p.mm.mmap({ length: P, prot: RW, shared: true, file }))
  must(p.mm.store(a, bytes(10)))
  must(p.mm.mprotect(a, P, Prot.READ))
  const w = p.mm.store(a, new Uint8Array(1))
  t.ok(!w.ok && w.errno === Errno.EFAULT)
  t.same(must(p.mm.load(a, 10)), bytes(10))
})

t.test('deleting a file frees its cache only when unmapped', async t => {
  const k = newKernel()
  const p = k.createProcess('t')
  const file = must(k.createFile('t', P))
  must(file.write(0, new Uint8Array([5])))
  const a = must(p.mm.mmap({ length: P, prot: RW, shared: true, file }))
  must(p.mm.load(a, 1))
  k.deleteFile(file.id)
  t.same(must(p.mm.load(a, 1)), new Uint8Array([5]), 'still mapped: still there')
  must(p.mm.munmap(a, P))
  t.equal(k.mem.usedFrames, 0)
})
