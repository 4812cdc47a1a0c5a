/**
 * Copies into, out of and within physical memory (a SharedArrayBuffer) at memcpy speed.
 *
 * V8 copies to, from or within shared memory with relaxed atomics, so that a racing thread
 * never sees undefined behaviour, and it moves whole words only when the two ends sit at
 * the same offset modulo 8: otherwise it goes a byte at a time. On this project's
 * machines that is about 3 GB/s against 15-25 GB/s (bench/RESULTS.md), and tenants'
 * addresses are arbitrary. So a copy whose ends disagree goes through a private scratch
 * buffer, placed so that the one step touching shared memory agrees; the private step is
 * a plain memmove. From about 1 KiB up, the two fast copies beat the slow one.
 *
 * Each thread (main, every engine) has its own scratch: these calls are synchronous and
 * never re-entered, so one buffer per thread serves them all.
 */

const WORD = 8
/** below this, the byte loop costs less than a second copy */
export const STAGE_MIN = 1024
const CHUNK = 64 * 1024
const scratch = new Uint8Array(CHUNK + 2 * WORD)

/** where `i` of `a` falls in a word; byteOffset counts because views start anywhere */
function phase (a: Uint8Array, i: number): number {
  return (a.byteOffset + i) % WORD
}

/** `mem[at, at + src.length) = src`, where `src` is private (not shared) memory. */
export function copyIn (mem: Uint8Array, at: number, src: Uint8Array): void {
  const n = src.length
  const s = phase(mem, at)
  if (n < STAGE_MIN || s === phase(src, 0)) {
    mem.set(src, at)
    return
  }
  for (let o = 0; o < n; o += CHUNK) {
    const m = Math.min(CHUNK, n - o)
    scratch.set(src.subarray(o, o + m), s)
    mem.set(scratch.subarray(s, s + m), at + o)
  }
}

/** `out[outAt, outAt + n) = mem[from, from + n)`, where `out` is private memory. */
export function copyOut (out: Uint8Array, outAt: number, mem: Uint8Array, from: number, n: number): void {
  const s = phase(mem, from)
  if (n < STAGE_MIN || s === phase(out, outAt)) {
    out.set(mem.subarray(from, from + n), outAt)
    return
  }
  for (let o = 0; o < n; o += CHUNK) {
    const m = Math.min(CHUNK, n - o)
    scratch.set(mem.subarray(from + o, from + o + m), s)
    out.set(scratch.subarray(s, s + m), outAt + o)
  }
}

/** `mem.copyWithin(dst, src, src + n)`: memmove, overlap included. */
export function moveWithin (mem: Uint8Array, dst: number, src: number, n: number): void {
  const ps = phase(mem, src)
  const pd = phase(mem, dst)
  if (n < STAGE_MIN || ps === pd) {
    mem.copyWithin(dst, src, src + n)
    return
  }
  // Each chunk is read whole before any of it is written, so walking away from the
  // overlap (backwards when dst is above src) never reads a byte already overwritten.
  const chunks = Math.ceil(n / CHUNK)
  const backward = dst > src
  for (let c = 0; c < chunks; c++) {
    const o = (backward ? chunks - 1 - c : c) * CHUNK
    const m = Math.min(CHUNK, n - o)
    scratch.set(mem.subarray(src + o, src + o + m), ps)
    scratch.copyWithin(pd, ps, ps + m)
    mem.set(scratch.subarray(pd, pd + m), dst + o)
  }
}
