import t from 'tap'
import fc from 'fast-check'
import { Errno } from '../../src/hw/errno.ts'
import type { Pin } from '../../src/kernel/mm.ts'
import type { Process } from '../../src/kernel/process.ts'
import { Prot } from '../../src/kernel/vma.ts'
import { RW, hold as holdAccess, must, newKernel } from './helpers.ts'

const P = 4096
const RUNS = 150

t.test('munmap and mprotect split mappings exactly as a page model says', async t => {
  const N = 16
  const opArb = fc.oneof(
    fc.record({ op: fc.constant('mmap' as const), i: fc.nat(N - 1), n: fc.integer({ min: 1, max: 6 }), prot: fc.constantFrom(0, 1, 3) }),
    fc.record({ op: fc.constant('munmap' as const), i: fc.nat(N - 1), n: fc.integer({ min: 1, max: 6 }) }),
    fc.record({ op: fc.constant('mprotect' as const), i: fc.nat(N - 1), n: fc.integer({ min: 1, max: 6 }), prot: fc.constantFrom(0, 1, 3) }),
    fc.record({ op: fc.constant('store' as const), i: fc.nat(N - 1), v: fc.integer({ min: 1, max: 255 }) })
  )
  fc.assert(fc.property(fc.array(opArb, { maxLength: 40 }), ops => {
    const k = newKernel(256)
    const { mm } = k.createProcess('t')
    const base = 0x40000000
    const model: Array<{ prot: number, v: number } | undefined> = new Array(N).fill(undefined)
    for (const o of ops) {
      const n = Math.min(o.op === 'store' ? 1 : o.n, N - o.i)
      const range = model.slice(o.i, o.i + n)
      if (o.op === 'mmap') {
        if (range.some(x => x !== undefined)) continue
        t.equal(must(mm.mmap({ length: n * P, prot: o.prot, shared: false, addr: base + o.i * P })), base + o.i * P)
        for (let j = 0; j < n; j++) model[o.i + j] = { prot: o.prot, v: 0 }
      } else if (o.op === 'munmap') {
        must(mm.munmap(base + o.i * P, n * P))
        for (let j = 0; j < n; j++) model[o.i + j] = undefined
      } else if (o.op === 'mprotect') {
        const r = mm.mprotect(base + o.i * P, n * P, o.prot)
        if (range.some(x => x === undefined)) {
          if (r.ok || r.errno !== Errno.ENOMEM) return false
        } else {
          if (!r.ok) return false
          for (let j = 0; j < n; j++) model[o.i + j] = { prot: o.prot, v: model[o.i + j]!.v }
        }
      } else {
        const r = mm.store(base + o.i * P + 7, new Uint8Array([o.v]))
        const m = model[o.i]
        const can = m !== undefined && (m.prot & Prot.WRITE) !== 0
        if (r.ok !== can) return false
        if (can) m.v = o.v
      }
      for (let i = 0; i < N; i++) {
        const vma = mm.findVma(base + i * P)
        const m = model[i]
        if ((vma === undefined) !== (m === undefined)) return false
        if (vma !== undefined && m !== undefined) {
          if (vma.prot !== m.prot) return false
          const l = mm.load(base + i * P + 7, 1)
          if ((m.prot & Prot.READ) === 0) {
            if (l.ok) return false
          } else if (!l.ok || l.value[0] !== m.v) return false
        }
      }
    }
    // vmas never overlap and stay sorted
    for (let i = 1; i < mm.vmas.length; i++) if (mm.vmas[i - 1].end > mm.vmas[i].start) return false
    k.exit(k.processes.values().next().value as Process)
    return k.mem.usedFrames === 0
  }), { numRuns: RUNS })
})

t.test('fork and COW: each side sees memory as at fork plus its own writes; DMA through a pin lands in the pinner', async t => {
  const PAGES = 4
  const opArb = fc.oneof(
    fc.record({ op: fc.constant('store' as const), who: fc.nat(3), off: fc.nat(PAGES * P - 1), v: fc.integer({ min: 1, max: 255 }) }),
    fc.record({ op: fc.constant('fork' as const), who: fc.nat(3) }),
    fc.record({ op: fc.constant('pin' as const), who: fc.nat(3), page: fc.nat(PAGES - 1) }),
    fc.record({ op: fc.constant('dma' as const), v: fc.integer({ min: 1, max: 255 }) }),
    fc.record({ op: fc.constant('unpin' as const) }),
    fc.record({ op: fc.constant('exit' as const), who: fc.nat(3) })
  )
  fc.assert(fc.property(fc.array(opArb, { maxLength: 30 }), ops => {
    const k = newKernel(512)
    const first = k.createProcess('t')
    const a = must(first.mm.mmap({ length: PAGES * P, prot: RW, shared: false }))
    const procs: Array<{ p: Process, model: Uint8Array }> = [{ p: first, model: new Uint8Array(PAGES * P) }]
    const pins: Array<{ pin: Pin, owner: { model: Uint8Array }, page: number }> = []
    for (const o of ops) {
      if (o.op === 'store') {
        const e = procs[o.who % procs.length]
        if (e === undefined) continue
        must(e.p.mm.store(a + o.off, new Uint8Array([o.v])))
        e.model[o.off] = o.v
      } else if (o.op === 'fork') {
        const e = procs[o.who % procs.length]
        if (e === undefined || procs.length >= 4) continue
        procs.push({ p: must(k.fork(e.p)), model: e.model.slice() })
      } else if (o.op === 'pin') {
        const e = procs[o.who % procs.length]
        if (e === undefined) continue
        pins.push({ pin: must(e.p.mm.pin(a + o.page * P, P, true, true)), owner: e, page: o.page })
      } else if (o.op === 'dma') {
        const last = pins[pins.length - 1]
        if (last === undefined) continue
        k.mem.bytes[last.pin.frames[0] * P + 11] = o.v
        // The device writes the pinned frame: only the pinner, and only while it maps it, may see it.
        if (procs.some(e => e === last.owner)) last.owner.model[last.page * P + 11] = o.v
      } else if (o.op === 'unpin') {
        pins.shift()?.pin.unpin()
      } else {
        const i = o.who % procs.length
        const e = procs[i]
        if (e === undefined || procs.length === 1) continue
        k.exit(e.p)
        procs.splice(i, 1)
      }
      for (const e of procs) {
        const mem = must(e.p.mm.load(a, PAGES * P))
        if (Buffer.compare(mem, e.model) !== 0) return false
      }
    }
    for (const x of pins) x.pin.unpin()
    for (const e of procs) k.exit(e.p)
    return k.mem.usedFrames === 0
  }), { numRuns: RUNS })
})

t.test('no frame is freed or handed out again while a pin or device access holds it', async t => {
  const opArb = fc.oneof(
    fc.record({ op: fc.constant('touch' as const), page: fc.nat(7) }),
    fc.record({ op: fc.constant('pin' as const), page: fc.nat(7) }),
    fc.record({ op: fc.constant('access' as const), page: fc.nat(7) }),
    fc.record({ op: fc.constant('release' as const) }),
    fc.record({ op: fc.constant('munmap' as const), page: fc.nat(7) }),
    fc.record({ op: fc.constant('remap' as const) }),
    fc.record({ op: fc.constant('fork' as const) }),
    fc.record({ op: fc.constant('exit' as const) })
  )
  fc.assert(fc.property(fc.array(opArb, { maxLength: 40 }), ops => {
    const k = newKernel(512)
    const held = new Map<number, number>()
    let violated = false
    const alloc = k.mem.alloc.bind(k.mem)
    const put = k.mem.put.bind(k.mem)
    k.mem.alloc = () => {
      const r = alloc()
      if (r.ok && (held.get(r.value) ?? 0) > 0) violated = true
      return r
    }
    k.mem.put = (f: number) => {
      const freed = put(f)
      if (freed && (held.get(f) ?? 0) > 0) violated = true
      return freed
    }
    const hold = (frames: number[], d: number): void => { for (const f of frames) held.set(f, (held.get(f) ?? 0) + d) }
    let p = k.createProcess('t')
    let pasid = must(k.bindPasid(p))
    const tlb = k.iommu.createIotlb('dev')
    const base = 0x50000000
    must(p.mm.mmap({ length: 8 * P, prot: RW, shared: false, addr: base }))
    const holders: Array<{ frames: number[], drop: () => void }> = []
    const others: Process[] = []
    for (const o of ops) {
      if (o.op === 'touch') p.mm.store(base + o.page * P, new Uint8Array([1]))
      else if (o.op === 'pin') {
        const r = p.mm.pin(base + o.page * P, P, true, false)
        if (r.ok) {
          hold(r.value.frames, 1)
          holders.push({ frames: r.value.frames, drop: () => r.value.unpin() })
        }
      } else if (o.op === 'access') {
        const acc = k.iommu.beginAccess(pasid)
        const frames = holdAccess(k, tlb, acc, base + o.page * P, P, false).frames
        hold(frames, 1)
        holders.push({ frames, drop: () => acc.release() })
      } else if (o.op === 'release') {
        const h = holders.shift()
        if (h !== undefined) {
          hold(h.frames, -1)
          h.drop()
        }
      } else if (o.op === 'munmap') must(p.mm.munmap(base + o.page * P, P))
      else if (o.op === 'remap') {
        must(p.mm.munmap(base, 8 * P))
        must(p.mm.mmap({ length: 8 * P, prot: RW, shared: false, addr: base }))
        for (let i = 0; i < 8; i++) must(p.mm.store(base + i * P, new Uint8Array([2])))
      } else if (o.op === 'fork') {
        if (others.length < 3) others.push(must(k.fork(p)))
      } else {
        k.exit(p)
        p = others.pop() ?? k.createProcess('t')
        pasid = must(k.bindPasid(p))
        if (p.mm.findVma(base) === undefined) must(p.mm.mmap({ length: 8 * P, prot: RW, shared: false, addr: base }))
      }
      if (violated) return false
    }
    for (const h of holders) {
      hold(h.frames, -1)
      h.drop()
    }
    return !violated && k.mem.refcount(0) === 0
  }), { numRuns: RUNS })
})
