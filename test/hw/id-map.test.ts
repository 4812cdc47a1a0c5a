import t from 'tap'
import fc from 'fast-check'
import { IdMap } from '../../src/hw/engine-pool.ts'

// Ids from a small pool collide in the probe sequences; ids past 2**32 and 2**52 check
// the hash takes both words.
const idArb = fc.oneof(
  fc.nat(40),
  fc.integer({ min: 2 ** 32 - 8, max: 2 ** 32 + 8 }),
  fc.constantFrom(2 ** 52, 2 ** 52 + 1, Number.MAX_SAFE_INTEGER, 2 ** 33 + 5)
)

type Op = { op: 'set', id: number, v: number } | { op: 'delete', id: number } | { op: 'get', id: number }

/** Operations on `ids` with values from `values`, as fast-check arbitraries. */
function opsOf (ids: fc.Arbitrary<number>, values: fc.Arbitrary<number>): fc.Arbitrary<Op> {
  return fc.oneof(
    fc.record({ op: fc.constant('set' as const), id: ids, v: values }),
    fc.record({ op: fc.constant('delete' as const), id: ids }),
    fc.record({ op: fc.constant('get' as const), id: ids })
  )
}

/** Runs `ops` on `m` and on a Map alike: whether every answer, and the size after each, agree. */
function agreesWithMap (m: IdMap, ops: Op[]): boolean {
  const model = new Map<number, number>()
  for (const o of ops) {
    if (o.op === 'set') {
      m.set(o.id, o.v)
      model.set(o.id, o.v)
    } else if (o.op === 'delete') {
      if (m.delete(o.id) !== model.delete(o.id)) return false
    }
    if (m.size !== model.size) return false
    for (const [id, v] of model) if (m.get(id) !== v || !m.has(id)) return false
    if (o.op === 'get' && !model.has(o.id) && (m.get(o.id) !== -1 || m.has(o.id))) return false
  }
  return true
}

t.test('the engine pool\'s id map answers as a Map does, through growth and deletions', async t => {
  // 16 slots to start with: a few dozen ids make it grow, deletions wrap the table
  fc.assert(fc.property(fc.array(opsOf(idArb, fc.nat(7)), { maxLength: 300 }), ops => agreesWithMap(new IdMap(16), ops)), { numRuns: 300 })
  t.pass('300 runs of up to 300 operations agree with a Map')
})

t.test('deleting inside a cluster keeps the keys behind it reachable', async t => {
  const m = new IdMap(16)
  // consecutive ids: several share probe runs in a 16-slot table
  for (let id = 0; id < 7; id++) m.set(id * 16, id)
  for (let id = 0; id < 7; id += 2) t.ok(m.delete(id * 16))
  for (let id = 1; id < 7; id += 2) t.equal(m.get(id * 16), id)
  t.equal(m.size, 3)
  t.notOk(m.delete(0), 'a deleted id is gone')
})

t.test('ids under the dense bound and ids past it answer as a Map does, side by side', async t => {
  // a dense bound of 24: ids 0-23 take the direct array, the rest (and fractions) the table
  const mixedArb = fc.oneof(fc.nat(40), fc.constantFrom(0.5, 23, 24, 2 ** 32 + 1, Number.MAX_SAFE_INTEGER))
  fc.assert(fc.property(fc.array(opsOf(mixedArb, fc.integer({ min: -2, max: 7 })), { maxLength: 200 }), ops => agreesWithMap(new IdMap(16, 24), ops)), { numRuns: 200 })
  t.pass('200 runs agree with a Map, values down to RESERVED (-2) included')
})
