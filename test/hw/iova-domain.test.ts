import t from 'tap'
import fc from 'fast-check'
import { Errno, type Result } from '../../src/hw/errno.ts'
import { PAGE_SIZE, PhysMem } from '../../src/hw/phys-mem.ts'
import { IOMMU_READ, IOMMU_WRITE, IovaDomain, MAX_IOVA, type IovaMapping } from '../../src/hw/iova-domain.ts'

const P = PAGE_SIZE
const RW = IOMMU_READ | IOMMU_WRITE

function setup (nframes = 16, aperture?: number): { mem: PhysMem, dom: IovaDomain, frames: number[] } {
  const mem = new PhysMem(256 * P)
  const frames: number[] = []
  for (let i = 0; i < nframes; i++) {
    const r = mem.alloc()
    if (!r.ok) throw new Error('alloc')
    frames.push(r.value)
  }
  const dom = new IovaDomain(1, mem, aperture === undefined ? undefined : { aperture })
  return { mem, dom, frames }
}

function errnoOf<T> (r: Result<T>): string {
  return r.ok ? 'ok' : r.errno
}

function lowestSetBit (n: number): number {
  let b = 1
  while (n % (b * 2) === 0) b *= 2
  return b
}

t.test('map rejects bad arguments with EINVAL and changes nothing', async t => {
  const { mem, dom, frames } = setup(4, 64 * P)
  const f = frames.slice(0, 2)
  const freed = mem.alloc()
  if (!freed.ok) throw new Error('alloc')
  mem.put(freed.value)
  const cases: Array<[string, number | undefined, number[], number]> = [
    ['misaligned iova', P + 1, f, RW],
    ['negative iova', -P, f, RW],
    ['fractional iova', P + 0.5, f, RW],
    ['empty frame list', P, [], RW],
    ['empty frame list, automatic', undefined, [], RW],
    ['perm 0', P, f, 0],
    ['unknown perm bit', P, f, 4],
    ['perm with an unknown bit', P, f, RW | 8],
    ['end past the aperture', 63 * P, f, RW],
    ['start at the aperture', 64 * P, f, RW],
    ['start past 2^47', MAX_IOVA, f, RW],
    ['longer than the aperture', undefined, new Array(65).fill(frames[0]), RW],
    ['frame 0', P, [0], RW],
    ['free frame', P, [frames[0], freed.value], RW],
    ['frame past the end of memory', P, [mem.nframes], RW]
  ]
  for (const [name, iova, fr, perm] of cases) t.equal(errnoOf(dom.map(iova, fr, perm)), Errno.EINVAL, name)
  t.same(dom.mappings(), [])
  t.equal(dom.mappedBytes, 0)
  for (const fr of frames) t.equal(mem.refcount(fr), 1, 'no reference taken')
})

t.test('the default aperture is 2^47', async t => {
  const { dom, frames } = setup(1)
  t.equal(dom.aperture, MAX_IOVA)
  t.same(dom.map(MAX_IOVA - P, [frames[0]], RW), { ok: true, value: MAX_IOVA - P })
  t.equal(dom.lookup(MAX_IOVA - 1)?.frame, frames[0])
  t.equal(errnoOf(dom.map(MAX_IOVA, [frames[0]], RW)), Errno.EINVAL)
})

t.test('constructor rejects a bad aperture', async t => {
  const mem = new PhysMem(16 * P)
  for (const aperture of [0, P + 1, -P, MAX_IOVA + P, Number.NaN]) {
    t.throws(() => new IovaDomain(1, mem, { aperture }), RangeError, `aperture ${aperture}`)
  }
})

t.test('EEXIST on any overlap; adjacent maps are fine', async t => {
  const { mem, dom, frames } = setup(8)
  t.ok(dom.map(16 * P, frames.slice(0, 4), RW).ok) // [16, 20)
  const overlapping: Array<[string, number, number]> = [
    ['same range', 16, 4],
    ['same start', 16, 1],
    ['same end', 19, 1],
    ['middle', 17, 2],
    ['straddles the start', 15, 2],
    ['straddles the end', 19, 2],
    ['covers it', 15, 6]
  ]
  for (const [name, page, n] of overlapping) {
    t.equal(errnoOf(dom.map(page * P, frames.slice(0, n), RW)), Errno.EEXIST, name)
  }
  t.equal(mem.refcount(frames[0]), 2, 'failed maps took no reference')
  t.same(dom.map(14 * P, frames.slice(4, 6), RW), { ok: true, value: 14 * P }, 'adjacent below')
  t.same(dom.map(20 * P, frames.slice(6, 8), RW), { ok: true, value: 20 * P }, 'adjacent above')
  t.same(dom.mappings(), [
    { iova: 14 * P, length: 2 * P, perm: RW },
    { iova: 16 * P, length: 4 * P, perm: RW },
    { iova: 20 * P, length: 2 * P, perm: RW }
  ], 'sorted and never merged')
})

t.test('unmap rejects bad ranges with EINVAL', async t => {
  const { dom, frames } = setup(1)
  t.ok(dom.map(P, frames, RW).ok)
  const cases: Array<[string, number, number]> = [
    ['misaligned iova', P + 1, P],
    ['misaligned length', P, P + 1],
    ['zero length', P, 0],
    ['negative iova', -P, 2 * P],
    ['negative length', P, -P],
    ['past 2^47', MAX_IOVA - P, 2 * P]
  ]
  for (const [name, iova, length] of cases) t.equal(errnoOf(dom.unmap(iova, length)), Errno.EINVAL, name)
  t.equal(dom.mappedBytes, P)
})

t.test('unmap answers ENOENT for a cut or absent mapping and changes nothing', async t => {
  const { mem, dom, frames } = setup(4)
  const invalidated: number[][] = []
  dom.onInvalidate = (iova, length) => { invalidated.push([iova, length]) }
  t.ok(dom.map(16 * P, frames.slice(0, 2), RW).ok)
  t.ok(dom.map(20 * P, frames.slice(2, 4), RW).ok)
  const cases: Array<[string, number, number]> = [
    ['first page of a mapping', 16, 1],
    ['last page of a mapping', 17, 1],
    ['starts before, ends inside', 15, 2],
    ['starts inside, ends after', 17, 2],
    ['the gap between mappings', 18, 2],
    ['below every mapping', 0, 16],
    ['above every mapping', 22, 10],
    ['whole first mapping but cuts the second', 16, 5],
    ['cuts the first but covers the second', 17, 5]
  ]
  for (const [name, page, n] of cases) t.equal(errnoOf(dom.unmap(page * P, n * P)), Errno.ENOENT, name)
  t.equal(dom.mappings().length, 2)
  t.equal(dom.mappedBytes, 4 * P)
  t.same(invalidated, [])
  for (const f of frames) t.equal(mem.refcount(f), 2)
})

t.test('ENOSPC when no hole fits; automatic IOVAs never use 0', async t => {
  const { dom, frames } = setup(4, 4 * P)
  t.same(dom.map(undefined, frames.slice(0, 3), RW), { ok: true, value: P })
  t.equal(errnoOf(dom.map(undefined, [frames[3]], RW)), Errno.ENOSPC)
  t.same(dom.map(0, [frames[3]], RW), { ok: true, value: 0 }, 'a fixed map may still use 0')
  t.equal(dom.unmapAll(), 4 * P)
  t.equal(errnoOf(dom.map(undefined, frames, RW)), Errno.ENOSPC, 'a full-aperture length needs IOVA 0')
  t.same(dom.map(0, frames, RW), { ok: true, value: 0 })
})

// tools/testing/selftests/iommu/iommufd.c: TEST_F(iommufd_ioas, area)
t.test('selftest area: single pages, split fails, over-map fails, unmap all', async t => {
  const { dom, frames } = setup(2)
  const base = 1 << 20
  for (let i = 0; i < 10; i++) t.equal(errnoOf(dom.unmap(i * P, P)), Errno.ENOENT, `unmap ${i} with nothing mapped`)
  for (let i = 0; i < 10; i++) t.ok(dom.map(base + i * P, [frames[0]], RW).ok)
  for (let i = 0; i < 10; i++) t.same(dom.unmap(base + i * P, P), { ok: true, value: P })

  t.ok(dom.map(base + 16 * P, frames, RW).ok)
  t.equal(errnoOf(dom.unmap(base + 16 * P, P)), Errno.ENOENT, 'split at the first page')
  t.equal(errnoOf(dom.unmap(base + 17 * P, P)), Errno.ENOENT, 'split at the second page')

  t.equal(errnoOf(dom.map(base + 16 * P, frames, RW)), Errno.EEXIST)
  t.equal(errnoOf(dom.map(base + 16 * P, [frames[0]], RW)), Errno.EEXIST)
  t.equal(errnoOf(dom.map(base + 17 * P, [frames[0]], RW)), Errno.EEXIST)
  t.equal(errnoOf(dom.map(base + 15 * P, frames, RW)), Errno.EEXIST)
  t.equal(errnoOf(dom.map(base + 15 * P, [...frames, frames[0]], RW)), Errno.EEXIST)

  t.equal(dom.unmapAll(), 2 * P)
  t.equal(dom.unmapAll(), 0, 'unmap all succeeds on an empty domain')
})

// tools/testing/selftests/iommu/iommufd.c: TEST_F(iommufd_ioas, unmap_fully_contained_areas)
t.test('selftest unmap_fully_contained_areas: several mappings with gaps', async t => {
  const { mem, dom, frames } = setup(8)
  const base = (1 << 20) + 4 * P
  for (let i = 0; i < 4; i++) t.ok(dom.map(base + i * 16 * P, frames, RW).ok)
  t.equal(mem.refcount(frames[0]), 5)
  t.equal(errnoOf(dom.unmap(base - 4 * P, 8 * P)), Errno.ENOENT)
  t.equal(errnoOf(dom.unmap(base + 3 * 16 * P + 8 * P - 4 * P, 8 * P)), Errno.ENOENT)
  const calls: number[][] = []
  dom.onInvalidate = (iova, length) => { calls.push([iova, length]) }
  t.same(dom.unmap(base - 4 * P, 3 * 16 * P + 8 * P + 4 * P), { ok: true, value: 32 * P })
  t.same(calls, [0, 1, 2, 3].map(i => [base + i * 16 * P, 8 * P]), 'one invalidation per mapping, in order')
  t.same(dom.mappings(), [])
  t.equal(mem.refcount(frames[0]), 1)
})

// tools/testing/selftests/iommu/iommufd.c: TEST_F(iommufd_ioas, area_auto_iova)
t.test('selftest area_auto_iova: automatic IOVAs are aligned', async t => {
  const { dom, frames } = setup(10)
  const iovas: number[] = []
  for (let i = 0; i < 10; i++) {
    const r = dom.map(undefined, [frames[i]], RW)
    if (!r.ok) throw new Error(r.message)
    iovas.push(r.value)
  }
  t.equal(new Set(iovas).size, 10)
  for (const iova of iovas) t.same(dom.unmap(iova, P), { ok: true, value: P })

  iovas.length = 0
  for (let i = 0; i < 10; i++) {
    const length = P * (i + 1)
    const r = dom.map(undefined, frames.slice(0, i + 1), RW)
    if (!r.ok) throw new Error(r.message)
    t.equal(r.value % lowestSetBit(length), 0, `length ${i + 1} pages at ${r.value}`)
    t.not(r.value, 0)
    iovas.push(r.value)
  }
  for (let i = 0; i < 10; i++) t.same(dom.unmap(iovas[i], P * (i + 1)), { ok: true, value: P * (i + 1) })
  t.equal(dom.mappedBytes, 0)
})

t.test('automatic IOVA takes the lowest aligned hole', async t => {
  const { dom, frames } = setup(8)
  t.ok(dom.map(P, [frames[0]], RW).ok)
  t.same(dom.map(undefined, [frames[1]], RW), { ok: true, value: 2 * P })
  t.ok(dom.map(4 * P, frames.slice(0, 4), RW).ok)
  t.same(dom.map(undefined, frames.slice(0, 2), RW), { ok: true, value: 8 * P }, 'the hole at 3 is one page')
  t.same(dom.map(undefined, [frames[2]], RW), { ok: true, value: 3 * P }, 'one page fits at 3')
  t.same(dom.map(undefined, frames.slice(0, 3), RW), { ok: true, value: 10 * P }, 'three pages align to one page')
})

t.test('automatic alignment is capped at 1 GiB', async t => {
  const { mem, dom, frames } = setup(1)
  const pages = (2 * 2 ** 30) / P
  const r = dom.map(undefined, new Array(pages).fill(frames[0]), IOMMU_READ)
  t.same(r, { ok: true, value: 2 ** 30 }, 'a 2 GiB mapping lands on the first 1 GiB boundary above 0')
  t.equal(mem.refcount(frames[0]), pages + 1)
  t.equal(dom.unmapAll(), 2 * 2 ** 30)
  t.equal(mem.refcount(frames[0]), 1)
})

t.test('lookup walks pages of each mapping', async t => {
  const { dom, frames } = setup(3)
  t.ok(dom.map(8 * P, [frames[2], frames[0]], IOMMU_READ).ok)
  t.ok(dom.map(10 * P, [frames[1]], IOMMU_WRITE).ok)
  t.equal(dom.lookup(8 * P - 1), undefined)
  t.same(dom.lookup(8 * P), { frame: frames[2], perm: IOMMU_READ })
  t.same(dom.lookup(9 * P - 1), { frame: frames[2], perm: IOMMU_READ })
  t.same(dom.lookup(9 * P + 123), { frame: frames[0], perm: IOMMU_READ })
  t.same(dom.lookup(10 * P + P - 1), { frame: frames[1], perm: IOMMU_WRITE })
  t.equal(dom.lookup(11 * P), undefined)
  t.equal(dom.lookup(-1), undefined)
  t.equal(dom.lookup(Number.NaN), undefined)
})

t.test('accessRw copies across page boundaries at unaligned offsets', async t => {
  const { mem, dom, frames } = setup(3)
  // Frames deliberately out of order, so a copy that assumes contiguous memory shows up.
  const order = [frames[2], frames[0], frames[1]]
  t.ok(dom.map(32 * P, order, RW).ok)
  const start = 32 * P + P - 100
  const data = Uint8Array.from({ length: P + 300 }, (_, i) => (i * 7 + 3) & 0xff)
  t.same(dom.accessRw(start, data, true), { ok: true, value: data.length })
  t.same(mem.frameView(order[0]).subarray(P - 100), data.subarray(0, 100))
  t.same(mem.frameView(order[1]), data.subarray(100, 100 + P))
  t.same(mem.frameView(order[2]).subarray(0, 200), data.subarray(100 + P))
  t.equal(mem.frameView(order[2])[200], 0, 'nothing written past the end')
  const back = new Uint8Array(data.length)
  t.same(dom.accessRw(start, back, false), { ok: true, value: data.length })
  t.same(back, data)
  t.same(dom.accessRw(start, new Uint8Array(0), false), { ok: true, value: 0 })
  t.equal(errnoOf(dom.accessRw(-1, back, false)), Errno.EINVAL)
})

t.test('accessRw faults at the first unmapped or forbidden byte', async t => {
  const { mem, dom, frames } = setup(4)
  t.ok(dom.map(10 * P, [frames[0]], RW).ok)
  t.ok(dom.map(11 * P, [frames[1]], IOMMU_READ).ok)
  t.ok(dom.map(13 * P, [frames[2]], IOMMU_WRITE).ok)

  const data = new Uint8Array(40).fill(0xab)
  const w = dom.accessRw(11 * P - 10, data, true)
  t.match(w, { ok: false, errno: Errno.EFAULT, addr: 11 * P, done: 10 }, 'write into a read-only page')
  t.same(mem.frameView(frames[0]).subarray(P - 10), new Uint8Array(10).fill(0xab), 'bytes before the fault written')
  t.same(mem.frameView(frames[1]).subarray(0, 30), new Uint8Array(30), 'none after')

  mem.frameView(frames[1]).fill(0x11)
  const buf = new Uint8Array(P).fill(0xee)
  const r = dom.accessRw(12 * P - 5, buf, false)
  t.match(r, { ok: false, errno: Errno.EFAULT, addr: 12 * P, done: 5 }, 'read runs into the hole')
  t.same(buf.subarray(0, 5), new Uint8Array(5).fill(0x11))
  t.same(buf.subarray(5), new Uint8Array(P - 5).fill(0xee), 'buffer untouched after the fault')

  t.match(dom.accessRw(13 * P + 1, buf, false), { ok: false, errno: Errno.EFAULT, addr: 13 * P + 1, done: 0 }, 'read of a write-only page')
  t.same(dom.accessRw(13 * P + 1, new Uint8Array(8), true), { ok: true, value: 8 }, 'write of a write-only page')
})

t.test('references are taken on map and dropped after invalidation', async t => {
  const { mem, dom, frames } = setup(2)
  const [a, b] = frames
  t.ok(dom.map(P, [a, b], RW).ok)
  t.ok(dom.map(4 * P, [a], IOMMU_READ).ok)
  t.equal(mem.refcount(a), 3)
  t.equal(mem.refcount(b), 2)

  const seen: Array<{ iova: number, length: number, a: number, b: number, mapped: boolean }> = []
  dom.onInvalidate = (iova, length) => {
    seen.push({ iova, length, a: mem.refcount(a), b: mem.refcount(b), mapped: dom.lookup(iova) !== undefined })
  }
  t.same(dom.unmap(0, 3 * P), { ok: true, value: 2 * P })
  t.same(seen, [{ iova: P, length: 2 * P, a: 3, b: 2, mapped: false }], 'refs still held, translation already gone')
  t.equal(mem.refcount(a), 2)
  t.equal(mem.refcount(b), 1)

  t.equal(dom.unmapAll(), P)
  t.same(seen[1], { iova: 4 * P, length: P, a: 2, b: 1, mapped: false })
  t.equal(mem.refcount(a), 1)
  t.equal(dom.mappedBytes, 0)

  // The domain's reference alone keeps a frame alive after its owner lets go.
  t.ok(dom.map(P, [b], RW).ok)
  t.equal(mem.put(b), false)
  t.equal(dom.unmapAll(), P)
  t.equal(mem.refcount(b), 0, 'freed by the unmap')
})

// Reference model: one entry per mapped page, tagged with the mapping it belongs to.
interface ModelPage { frame: number, perm: number, id: number }
type Answer = { ok: true, value: number } | { ok: false, errno: string, addr?: number, done?: number }

class Model {
  readonly pages = new Map<number, ModelPage>()
  readonly maps = new Map<number, IovaMapping>()
  readonly aperture: number
  readonly valid: Set<number>
  #nextId = 1
  constructor (aperture: number, valid: Set<number>) {
    this.aperture = aperture
    this.valid = valid
  }

  #free (iova: number, length: number): boolean {
    for (let a = iova; a < iova + length; a += P) if (this.pages.has(a / P)) return false
    return true
  }

  map (iova: number | undefined, frames: number[], perm: number): Answer {
    const einval = { ok: false, errno: Errno.EINVAL } as const
    if (![1, 2, 3].includes(perm) || frames.length === 0) return einval
    if (frames.some(f => !this.valid.has(f))) return einval
    const length = frames.length * P
    if (length > this.aperture) return einval
    let at = -1
    if (iova === undefined) {
      const align = Math.min(Math.max(lowestSetBit(length), P), 2 ** 30)
      for (let c = Math.ceil(P / align) * align; c + length <= this.aperture; c += align) {
        if (this.#free(c, length)) { at = c; break }
      }
      if (at < 0) return { ok: false, errno: Errno.ENOSPC }
    } else {
      if (iova < 0 || iova % P !== 0 || iova + length > this.aperture) return einval
      if (!this.#free(iova, length)) return { ok: false, errno: Errno.EEXIST }
      at = iova
    }
    const id = this.#nextId++
    frames.forEach((frame, i) => this.pages.set(at / P + i, { frame, perm, id }))
    this.maps.set(id, { iova: at, length, perm })
    return { ok: true, value: at }
  }

  unmap (iova: number, length: number): { answer: Answer, removed: IovaMapping[] } {
    if (iova < 0 || length <= 0 || iova % P !== 0 || length % P !== 0 || iova + length > MAX_IOVA) {
      return { answer: { ok: false, errno: Errno.EINVAL }, removed: [] }
    }
    const ids = new Set<number>()
    for (const [page, e] of this.pages) if (page * P >= iova && page * P < iova + length) ids.add(e.id)
    if (ids.size === 0) return { answer: { ok: false, errno: Errno.ENOENT }, removed: [] }
    for (const id of ids) {
      const m = this.maps.get(id)!
      if (m.iova < iova || m.iova + m.length > iova + length) return { answer: { ok: false, errno: Errno.ENOENT }, removed: [] }
    }
    return this.#remove(ids)
  }

  unmapAll (): { answer: Answer, removed: IovaMapping[] } {
    return this.#remove(new Set(this.maps.keys()))
  }

  #remove (ids: Set<number>): { answer: Answer, removed: IovaMapping[] } {
    const removed = [...ids].map(id => this.maps.get(id)!).sort((x, y) => x.iova - y.iova)
    for (const [page, e] of this.pages) if (ids.has(e.id)) this.pages.delete(page)
    for (const id of ids) this.maps.delete(id)
    return { answer: { ok: true, value: removed.reduce((s, m) => s + m.length, 0) }, removed }
  }

  lookup (iova: number): { frame: number, perm: number } | undefined {
    const e = this.pages.get(Math.floor(iova / P))
    return e === undefined ? undefined : { frame: e.frame, perm: e.perm }
  }

  access (iova: number, length: number, write: boolean): Answer {
    const need = write ? IOMMU_WRITE : IOMMU_READ
    for (let addr = iova; addr < iova + length; addr = (Math.floor(addr / P) + 1) * P) {
      const e = this.lookup(addr)
      if (e === undefined || (e.perm & need) === 0) return { ok: false, errno: Errno.EFAULT, addr, done: addr - iova }
    }
    return { ok: true, value: length }
  }

  mappings (): IovaMapping[] {
    return [...this.maps.values()].sort((x, y) => x.iova - y.iova)
  }
}

function answerOf (r: Result<number>): Answer {
  if (r.ok) return { ok: true, value: r.value }
  const a: Answer = { ok: false, errno: r.errno }
  if (r.addr !== undefined) a.addr = r.addr
  if (r.done !== undefined) a.done = r.done
  return a
}

const APERTURE_PAGES = 16
const POOL = 6

type Op =
  | { kind: 'map', page: number | undefined, skew: number, frames: number[], perm: number }
  | { kind: 'unmap', page: number, pages: number, skew: number }
  | { kind: 'unmapCovering', first: number, last: number, before: number, after: number }
  | { kind: 'unmapAll' }
  | { kind: 'access', addr: number, length: number, write: boolean }

const pageArb = fc.integer({ min: 0, max: APERTURE_PAGES + 2 })
const skewArb = fc.oneof({ arbitrary: fc.constant(0), weight: 12 }, { arbitrary: fc.constant(1), weight: 1 })
// Negative indices stand for frames that are not allocated (0, and one that was freed).
const frameIndexArb = fc.oneof({ arbitrary: fc.integer({ min: 0, max: POOL - 1 }), weight: 30 }, { arbitrary: fc.constantFrom(-1, -2), weight: 1 })
const framesArb = fc.oneof({ arbitrary: fc.array(frameIndexArb, { minLength: 1, maxLength: 6 }), weight: 20 }, { arbitrary: fc.constant<number[]>([]), weight: 1 })
const permArb = fc.oneof({ arbitrary: fc.integer({ min: 1, max: 3 }), weight: 12 }, { arbitrary: fc.constantFrom(0, 4), weight: 1 })

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constant('map' as const), page: fc.option(pageArb, { nil: undefined, freq: 2 }), skew: skewArb, frames: framesArb, perm: permArb }), weight: 6 },
  { arbitrary: fc.record({ kind: fc.constant('unmap' as const), page: pageArb, pages: fc.integer({ min: 0, max: 12 }), skew: skewArb }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant('unmapCovering' as const), first: fc.nat(), last: fc.nat(), before: fc.integer({ min: -1, max: 2 }), after: fc.integer({ min: -1, max: 2 }) }), weight: 3 },
  { arbitrary: fc.constant({ kind: 'unmapAll' as const }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant('access' as const), addr: fc.integer({ min: 0, max: (APERTURE_PAGES + 1) * P }), length: fc.integer({ min: 0, max: 3 * P }), write: fc.boolean() }), weight: 2 }
)

t.test('property: IovaDomain agrees with a page-map model', async t => {
  fc.assert(fc.property(fc.array(opArb, { minLength: 10, maxLength: 60 }), fc.nat(), (ops, seed) => {
    const { mem, dom, frames } = setup(POOL + 1, APERTURE_PAGES * P)
    const freed = frames.pop()!
    mem.put(freed)
    const frameOf = (i: number): number => i === -1 ? 0 : i === -2 ? freed : frames[i]
    const model = new Model(APERTURE_PAGES * P, new Set(frames))
    let invalidated: Array<{ iova: number, length: number }> = []
    dom.onInvalidate = (iova, length) => {
      if (dom.lookup(iova) !== undefined) throw new Error('still translated during invalidation')
      invalidated.push({ iova, length })
    }
    const strip = (ms: Array<{ iova: number, length: number }>): Array<{ iova: number, length: number }> => ms.map(m => ({ iova: m.iova, length: m.length }))

    for (const op of ops) {
      invalidated = []
      if (op.kind === 'map') {
        const iova = op.page === undefined ? undefined : op.page * P + op.skew
        const fr = op.frames.map(frameOf)
        const got = answerOf(dom.map(iova, fr, op.perm))
        const want = model.map(iova, fr, op.perm)
        if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`map ${iova} ${JSON.stringify(fr)} ${op.perm}: got ${JSON.stringify(got)} want ${JSON.stringify(want)}`)
      } else if (op.kind === 'access') {
        const buf = new Uint8Array(op.length)
        const got = answerOf(dom.accessRw(op.addr, buf, op.write))
        const want = model.access(op.addr, op.length, op.write)
        if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`access ${op.addr}+${op.length}: got ${JSON.stringify(got)} want ${JSON.stringify(want)}`)
      } else {
        let got: Answer
        let want: { answer: Answer, removed: IovaMapping[] }
        if (op.kind === 'unmapAll') {
          got = { ok: true, value: dom.unmapAll() }
          want = model.unmapAll()
        } else {
          let iova: number
          let length: number
          const current = model.mappings()
          if (op.kind === 'unmap' || current.length === 0) {
            iova = op.kind === 'unmap' ? op.page * P + op.skew : 0
            length = op.kind === 'unmap' ? op.pages * P : P
          } else {
            const i = op.first % current.length
            const j = i + op.last % (current.length - i)
            iova = current[i].iova - op.before * P
            length = current[j].iova + current[j].length + op.after * P - iova
          }
          got = answerOf(dom.unmap(iova, length))
          want = model.unmap(iova, length)
        }
        if (JSON.stringify(got) !== JSON.stringify(want.answer)) throw new Error(`${op.kind}: got ${JSON.stringify(got)} want ${JSON.stringify(want.answer)}`)
        if (JSON.stringify(strip(invalidated)) !== JSON.stringify(strip(want.removed))) throw new Error(`${op.kind}: invalidated ${JSON.stringify(invalidated)}`)
      }

      // State: mappings, byte count, every page's translation and every frame's refcount.
      if (JSON.stringify(dom.mappings()) !== JSON.stringify(model.mappings())) throw new Error(`mappings ${JSON.stringify(dom.mappings())} vs ${JSON.stringify(model.mappings())}`)
      if (dom.mappedBytes !== model.pages.size * P) throw new Error('mappedBytes')
      for (let page = 0; page < APERTURE_PAGES + 2; page++) {
        const addr = page * P + (seed + page * 977) % P
        if (JSON.stringify(dom.lookup(addr)) !== JSON.stringify(model.lookup(addr))) throw new Error(`lookup ${addr}`)
      }
      for (const f of frames) {
        let refs = 1
        for (const e of model.pages.values()) if (e.frame === f) refs++
        if (mem.refcount(f) !== refs) throw new Error(`refcount of ${f}: ${mem.refcount(f)} vs ${refs}`)
      }
    }
    dom.unmapAll()
    for (const f of frames) if (mem.refcount(f) !== 1) throw new Error('references leaked')
  }), { numRuns: 200 })
  t.pass('200 random sequences agree')
})
