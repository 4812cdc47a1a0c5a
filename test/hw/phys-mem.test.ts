import t from 'tap'
import { PhysMem, PAGE_SIZE } from '../../src/hw/phys-mem.ts'

t.test('frames are zeroed, counted and refcounted', async t => {
  const mem = new PhysMem(16 * PAGE_SIZE)
  t.equal(mem.freeFrames, 15, 'frame 0 is never handed out')
  const a = mem.alloc()
  t.ok(a.ok)
  if (!a.ok) return
  t.not(a.value, 0)
  mem.frameView(a.value).fill(0xab)
  t.equal(mem.usedFrames, 1)
  mem.get(a.value)
  t.equal(mem.refcount(a.value), 2)
  t.equal(mem.put(a.value), false, 'still referenced')
  t.equal(mem.put(a.value), true, 'last reference frees')
  t.equal(mem.usedFrames, 0)
  const b = mem.alloc()
  t.ok(b.ok && b.value === a.value, 'the freed frame is reused first')
  if (b.ok) t.ok(mem.frameView(b.value).every(x => x === 0), 'and comes back zeroed')
  t.throws(() => mem.put(9), /free frame/)
  t.throws(() => mem.get(9), /free frame/)
})

t.test('running out answers ENOMEM, never throws', async t => {
  const mem = new PhysMem(4 * PAGE_SIZE)
  for (let i = 0; i < 3; i++) t.ok(mem.alloc().ok)
  const r = mem.alloc()
  t.equal(r.ok, false)
  if (!r.ok) t.equal(r.errno, 'ENOMEM')
})

t.test('bad sizes are refused with a clear message', async t => {
  t.throws(() => new PhysMem(100), /multiple of 4096/)
  t.throws(() => new PhysMem(0), /multiple of 4096/)
})
