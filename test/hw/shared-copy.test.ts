import t from 'tap'
import fc from 'fast-check'
import { ALIGNED_MEMCPY_MIN, UNALIGNED_MEMCPY_MIN, copyIn, copyOut, moveWithin } from '../../src/hw/shared-copy.ts'

// Lengths around the memcpy thresholds and across the 64 KiB chunks; offsets in every
// phase modulo 8, views that start mid-buffer on both sides.
const SPAN = 3 * 64 * 1024 + 64
const lenArb = fc.oneof(
  fc.nat(64),
  fc.integer({ min: UNALIGNED_MEMCPY_MIN - 9, max: UNALIGNED_MEMCPY_MIN + 9 }),
  fc.integer({ min: ALIGNED_MEMCPY_MIN - 9, max: ALIGNED_MEMCPY_MIN + 9 }),
  fc.integer({ min: 64 * 1024 - 9, max: 64 * 1024 + 9 }),
  fc.integer({ min: 1, max: 2 * 64 * 1024 + 17 })
)

function sharedWith (bytes: Uint8Array): Uint8Array {
  const mem = new Uint8Array(new SharedArrayBuffer(bytes.length))
  mem.set(bytes)
  return mem
}

function pattern (n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n)
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed * 17 + (i >>> 8)) & 0xFF
  return b
}

t.test('copyIn writes exactly src at any phase, and nothing around it', async t => {
  fc.assert(fc.property(lenArb, fc.nat(SPAN - 2 * 64 * 1024 - 40), fc.nat(15), fc.nat(255), (n, at, srcOff, seed) => {
    const before = pattern(SPAN, seed)
    const mem = sharedWith(before)
    const backing = pattern(n + 16, seed + 1)
    const src = backing.subarray(srcOff % 16, (srcOff % 16) + n)
    const model = before.slice()
    model.set(src, at)
    copyIn(mem, at, src)
    return Buffer.compare(Buffer.from(mem), Buffer.from(model)) === 0
  }), { numRuns: 200 })
  t.pass('200 runs agree with a plain set')
})

t.test('copyOut reads exactly the range at any phase, into a view at any offset', async t => {
  fc.assert(fc.property(lenArb, fc.nat(SPAN - 2 * 64 * 1024 - 40), fc.nat(15), fc.nat(255), (n, from, outOff, seed) => {
    const bytes = pattern(SPAN, seed)
    const mem = sharedWith(bytes)
    const out = new Uint8Array(n + 32).fill(0xEE)
    const view = out.subarray(outOff % 16)
    copyOut(view, 3, mem, from, n)
    const want = new Uint8Array(n + 32).fill(0xEE)
    want.set(bytes.subarray(from, from + n), (outOff % 16) + 3)
    return Buffer.compare(Buffer.from(out), Buffer.from(want)) === 0
  }), { numRuns: 200 })
  t.pass('200 runs agree with a plain set')
})

t.test('moveWithin is a memmove: overlapping either way, at every pair of phases', async t => {
  fc.assert(fc.property(lenArb, fc.nat(SPAN - 2 * 64 * 1024 - 40), fc.integer({ min: -70000, max: 70000 }), fc.nat(255), (n, src, delta, seed) => {
    const dst = Math.min(Math.max(0, src + delta), SPAN - n)
    const before = pattern(SPAN, seed)
    const mem = sharedWith(before)
    const model = before.slice()
    model.copyWithin(dst, src, src + n)
    moveWithin(mem, dst, src, n)
    return Buffer.compare(Buffer.from(mem), Buffer.from(model)) === 0
  }), { numRuns: 300 })
  t.pass('300 runs agree with copyWithin on private memory')
})

t.test('a long move one byte up and long copies at odd phases stay exact, chunk by chunk', async t => {
  const n = 200_000
  const before = pattern(n + 1, 9)
  const mem = sharedWith(before)
  moveWithin(mem, 1, 0, n)
  t.same(Buffer.from(mem.subarray(1)), Buffer.from(before.subarray(0, n)), 'every chunk read before it was overwritten')
  t.equal(mem[0], before[0])
  const src = pattern(n, 4)
  copyIn(mem, 5, src.subarray(6))
  t.same(Buffer.from(mem.subarray(5, 5 + n - 6)), Buffer.from(src.subarray(6)))
  const out = new Uint8Array(n)
  copyOut(out, 7, mem, 5, n - 7)
  t.same(Buffer.from(out.subarray(7)), Buffer.from(src.subarray(6, 6 + n - 7)))
})
