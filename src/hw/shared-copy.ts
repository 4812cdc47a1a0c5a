/**
 * Copies into, out of and within physical memory (a SharedArrayBuffer) at memcpy speed.
 *
 * V8 copies to, from or within shared memory with relaxed atomics, so that a racing thread
 * never sees undefined behaviour: whole words when the two ends sit at the same offset
 * modulo 8, otherwise a byte at a time. On this project's machines that is about 3 GB/s
 * unaligned and 20-25 GB/s aligned, where a plain memcpy runs at 28-80 GB/s
 * (bench/RESULTS.md, thirteenth session). `Buffer.prototype.fill` with a Uint8Array of
 * the region's length is one such memcpy in Node's C++, whatever the phases; it costs
 * some 50 ns a call where `set` costs 15, so short copies keep `set`. Racing engines and
 * tenants may see a torn copy either way, as they would on hardware: nothing here orders
 * two threads' bytes.
 *
 * Each thread (main, every engine) has its own scratch: these calls are synchronous and
 * never re-entered, so one buffer per thread serves them all.
 */

const WORD = 8
/** from here up, a memcpy (fill) beats V8's copy when the ends agree modulo 8 */
export const ALIGNED_MEMCPY_MIN = 2048
/** and from here up when they do not (V8 then goes a byte at a time) */
export const UNALIGNED_MEMCPY_MIN = 128
const CHUNK = 64 * 1024
const scratch = Buffer.allocUnsafeSlow(CHUNK)
const fill = Buffer.prototype.fill as unknown as { call: (to: Uint8Array, value: Uint8Array, start: number, end: number) => void }

/** `to[at, at + from.length) = from`, one memcpy: `fill` with a value as long as the region copies it once. */
function memcpy (to: Uint8Array, at: number, from: Uint8Array): void {
  fill.call(to, from, at, at + from.length)
}

/** where `i` of `a` falls in a word; byteOffset counts because views start anywhere */
function phase (a: Uint8Array, i: number): number {
  return (a.byteOffset + i) % WORD
}

function useMemcpy (n: number, sameWordPhase: boolean): boolean {
  return n >= (sameWordPhase ? ALIGNED_MEMCPY_MIN : UNALIGNED_MEMCPY_MIN)
}

/** `mem[at, at + src.length) = src`, where `src` is private (not shared) memory. */
export function copyIn (mem: Uint8Array, at: number, src: Uint8Array): void {
  const n = src.length
  if (useMemcpy(n, phase(mem, at) === phase(src, 0))) memcpy(mem, at, src)
  else mem.set(src, at)
}

/** `out[outAt, outAt + n) = mem[from, from + n)`, where `out` is private memory. */
export function copyOut (out: Uint8Array, outAt: number, mem: Uint8Array, from: number, n: number): void {
  const view = mem.subarray(from, from + n)
  if (useMemcpy(n, phase(mem, from) === phase(out, outAt))) memcpy(out, outAt, view)
  else out.set(view, outAt)
}

/** `mem.copyWithin(dst, src, src + n)`: memmove, overlap included. */
export function moveWithin (mem: Uint8Array, dst: number, src: number, n: number): void {
  if (!useMemcpy(n, phase(mem, src) === phase(mem, dst))) {
    mem.copyWithin(dst, src, src + n)
    return
  }
  if (dst >= src + n || src >= dst + n) {
    memcpy(mem, dst, mem.subarray(src, src + n))
    return
  }
  // A memcpy may not overlap itself, so each chunk goes out to scratch and back. Each is
  // read whole before any of it is written, so walking away from the overlap (backwards
  // when dst is above src) never reads a byte already overwritten.
  const chunks = Math.ceil(n / CHUNK)
  const backward = dst > src
  for (let c = 0; c < chunks; c++) {
    const o = (backward ? chunks - 1 - c : c) * CHUNK
    const m = Math.min(CHUNK, n - o)
    memcpy(scratch, 0, mem.subarray(src + o, src + o + m))
    memcpy(mem, dst + o, scratch.subarray(0, m))
  }
}
