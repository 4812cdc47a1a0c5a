import t from 'tap'
import fc from 'fast-check'
import { PageTable } from '../../src/kernel/page-table.ts'

// the highest page of a 47-bit user address space, and leaf edges (512 pages a leaf)
const TOP_VPN = 2 ** 35 - 1
const vpnArb = fc.oneof(
  fc.nat(2047),
  fc.constantFrom(0, 511, 512, 513, 1023, 1024, TOP_VPN - 512, TOP_VPN - 511, TOP_VPN),
  fc.integer({ min: 0, max: TOP_VPN })
)

t.test('a PageTable answers as a Map of the same operations does', async t => {
  const opArb = fc.oneof(
    fc.record({ op: fc.constant('set' as const), vpn: vpnArb, pte: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 2 ** 40 })) }),
    fc.record({ op: fc.constant('delete' as const), vpn: vpnArb }),
    fc.record({ op: fc.constant('get' as const), vpn: vpnArb })
  )
  fc.assert(fc.property(fc.array(opArb, { maxLength: 200 }), ops => {
    const pt = new PageTable()
    const model = new Map<number, number>()
    for (const o of ops) {
      if (o.op === 'set') {
        pt.set(o.vpn, o.pte)
        model.set(o.vpn, o.pte)
      } else if (o.op === 'delete') {
        if (pt.delete(o.vpn) !== model.delete(o.vpn)) return false
      }
      if (pt.get(o.vpn) !== model.get(o.vpn) || pt.has(o.vpn) !== model.has(o.vpn)) return false
      if (pt.size !== model.size) return false
    }
    const seen = [...pt].sort((a, b) => a[0] - b[0])
    const want = [...model].sort((a, b) => a[0] - b[0])
    return JSON.stringify(seen) === JSON.stringify(want) &&
      JSON.stringify([...pt.keys()].sort((a, b) => a - b)) === JSON.stringify([...model.keys()].sort((a, b) => a - b))
  }), { numRuns: 300 })
  t.pass('300 runs agreed with a Map')
})

t.test('deleting while iterating, as exit_mmap does, visits every entry once', async t => {
  const pt = new PageTable()
  const vpns = [0, 1, 511, 512, 4096, 4097, TOP_VPN]
  for (const v of vpns) pt.set(v, v * 8 + 3)
  const visited: number[] = []
  for (const [vpn, pte] of pt) {
    t.equal(pte, vpn * 8 + 3)
    visited.push(vpn)
    pt.delete(vpn)
  }
  t.same(visited.sort((a, b) => a - b), vpns)
  t.equal(pt.size, 0)
  t.equal(pt.get(4096), undefined)
  // a leaf emptied and made again starts empty
  pt.set(513, 7)
  t.equal(pt.get(512), undefined)
  t.equal(pt.get(513), 7)
  t.equal(pt.size, 1)
})

t.test('a pte is a number >= 0', async t => {
  const pt = new PageTable()
  t.throws(() => pt.set(1, -1), RangeError)
  t.throws(() => pt.set(1, Number.NaN), RangeError)
  t.equal(pt.size, 0)
  t.equal(pt.get(1), undefined)
})
