/**
 * What an engine computes, PROTOCOL.md section 3 (every opcode but the queue-level BATCH
 * and DRAIN): pure and synchronous over scatter-gather lists of physical memory, so the
 * same code runs in an engine worker (on a view of the SharedArrayBuffer) and in tests.
 * Hash, CRC and cipher input are fed as zero-copy views of the segments; only zlib and
 * the overlap cases below gather into one buffer.
 *
 * Contract with the caller (the device, which translated the addresses):
 * - `src` covers at least `size` bytes (size is already cut to the translated prefix).
 *   For COMPARE `dst` is the second source and must cover `size` too.
 * - `dst` may be shorter than the output: the translated prefix. MEMMOVE and FILL then
 *   do that prefix; every op then completes PAGE_FAULT with `value` = the offset from
 *   `dst` of the first byte that did not fit, so the caller faults at dst + value.
 *   Ops whose output is all-or-nothing (SHA256, DEFLATE, INFLATE, ENCRYPT, DECRYPT)
 *   write nothing in that case, and bytesCompleted is 0. DEFLATE and INFLATE never
 *   produce more than the translated dst, so the caller may translate dst lazily.
 * - `key` and `iv` cover 32 and 12 bytes. A segment outside `mem` or a `src` shorter
 *   than `size` is a bug in the caller: RangeError.
 */
import { createCipheriv, createDecipheriv, createHash, hash } from 'node:crypto'
import zlib from 'node:zlib'
import { copyIn, copyOut, moveWithin } from './shared-copy.ts'
import {
  AES_IV_SIZE, AES_KEY_SIZE, AES_TAG_SIZE, FILL_PATTERN_SIZE, MAX_DEFLATE_LEVEL, OP_ARGS_SIZE, Opcode, SHA256_SIZE, Status,
  crcSeed, deflateLevel, fillPattern
} from './descriptor.ts'

/**
 * A scatter-gather list: physical byte addresses and lengths, in order. Plain arrays or
 * typed arrays both do (the engine worker decodes its ring into plain arrays).
 */
export interface Sg {
  addrs: ArrayLike<number>
  lens: ArrayLike<number>
}

export interface EngineJob {
  opcode: number
  flags: number
  /** bytes of src to process (FILL: bytes to write) */
  size: number
  /** capacity of dst for DEFLATE, INFLATE, ENCRYPT, DECRYPT */
  dstSize: number
  /** the descriptor's 16 op_args bytes, from `argsAt` */
  args: Uint8Array
  /**
   * where the op_args start in `args` (default 0): the device's jobs point at their
   * whole descriptor instead of taking a view of it per job
   */
  argsAt?: number
  src: Sg
  dst: Sg
  key?: Sg
  iv?: Sg
}

export interface EngineResult {
  status: number
  /** COMPARE: 0 equal, 1 different */
  result: number
  bytesCompleted: number
  /** CRC32 checksum, output size, COMPARE offset of the first difference, PAGE_FAULT dst offset */
  value: number
}

export const EMPTY_SG: Sg = { addrs: [], lens: [] }

/**
 * An EngineResult of a class of its own, not an object literal: literals of this shape
 * share their map with the engine pool's completions, whose `value` (a CRC, a 64-bit
 * offset) is often not a small integer, and once that field's representation changed,
 * V8 built every such literal here through its slow runtime path (a deep copy of the
 * literal's template: about a tenth of the main thread when the front end runs MEMMOVEs
 * itself, bench/RESULTS.md, sixteenth session).
 */
class Done implements EngineResult {
  status: number
  result: number
  bytesCompleted: number
  value: number
  constructor (status: number, result: number, bytesCompleted: number, value: number) {
    this.status = status
    this.result = result
    this.bytesCompleted = bytesCompleted
    this.value = value
  }
}

/** The job's 16 op_args bytes; a view only for a job that points into its descriptor. */
function opArgs (job: EngineJob): Uint8Array {
  const at = job.argsAt ?? 0
  return at === 0 ? job.args : job.args.subarray(at, at + OP_ARGS_SIZE)
}

function done (status: number, bytesCompleted = 0, value = 0, result = 0): EngineResult {
  return new Done(status, result, bytesCompleted, value)
}

export function sgLength (sg: Sg): number {
  let n = 0
  for (let i = 0; i < sg.lens.length; i++) n += sg.lens[i]
  return n
}

function checkSg (mem: Uint8Array, sg: Sg, name: string): number {
  let n = 0
  for (let i = 0; i < sg.lens.length; i++) {
    const a = sg.addrs[i]
    const l = sg.lens[i]
    if (!(a >= 0 && l >= 0 && a + l <= mem.length)) {
      throw new RangeError(`${name} segment ${i} [${a}, +${l}) is outside physical memory`)
    }
    n += l
  }
  return n
}

// CRC-32/ISO-HDLC (reflected 0xEDB88320, init and xorout ~0), slicing-by-8: eight
// tables let the loop fold 8 input bytes per step instead of one.
const CRC_TABLE = (() => {
  const t = new Int32Array(8 * 256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = (c & 1) !== 0 ? 0xEDB88320 ^ (c >>> 1) : c >>> 1
    t[n] = c
  }
  for (let n = 0; n < 256; n++) {
    let c = t[n]
    for (let k = 1; k < 8; k++) {
      c = t[c & 0xFF] ^ (c >>> 8)
      t[k * 256 + n] = c
    }
  }
  return t
})()

/**
 * The zlib crc32 of `data`, continuing from `seed` (the crc of what came before), so
 * crc32Js(b, crc32Js(a)) === crc32Js(a ++ b).
 */
export function crc32Js (data: Uint8Array, seed = 0): number {
  const t = CRC_TABLE
  let c = ~seed
  let i = 0
  const n = data.length
  const end8 = n - (n & 7)
  while (i < end8) {
    const a = c ^ (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24))
    c = t[1792 + (a & 0xFF)] ^ t[1536 + ((a >>> 8) & 0xFF)] ^
      t[1280 + ((a >>> 16) & 0xFF)] ^ t[1024 + (a >>> 24)] ^
      t[768 + data[i + 4]] ^ t[512 + data[i + 5]] ^ t[256 + data[i + 6]] ^ t[data[i + 7]]
    i += 8
  }
  while (i < n) c = t[(c ^ data[i++]) & 0xFF] ^ (c >>> 8)
  return ~c >>> 0
}

type Crc32Fn = (data: Uint8Array, seed?: number) => number
const nativeCrc32 = (zlib as unknown as { crc32?: Crc32Fn }).crc32

/** zlib.crc32 where this Node has it (20.15+, native), else the table-driven one. */
export const crc32: Crc32Fn = nativeCrc32 !== undefined
  ? (data, seed = 0) => nativeCrc32(data, seed)
  : crc32Js

/** The first `len` bytes of an Sg as one view when it is one segment, else a copy. */
function gather (mem: Uint8Array, sg: Sg, len: number, forceCopy = false): Uint8Array {
  if (!forceCopy && sg.lens.length > 0 && sg.lens[0] >= len) return mem.subarray(sg.addrs[0], sg.addrs[0] + len)
  const out = Buffer.allocUnsafe(len)
  let o = 0
  for (let i = 0; o < len && i < sg.lens.length; i++) {
    const n = Math.min(sg.lens[i], len - o)
    copyOut(out, o, mem, sg.addrs[i], n)
    o += n
  }
  if (o < len) throw new RangeError(`scatter-gather list holds ${o} bytes, ${len} needed`)
  return out
}

/** Writes a stream of chunks into an Sg, in order. */
class SgWriter {
  #seg = 0
  #off = 0
  readonly #mem: Uint8Array
  readonly #sg: Sg
  constructor (mem: Uint8Array, sg: Sg) {
    this.#mem = mem
    this.#sg = sg
  }

  write (data: Uint8Array): void {
    let o = 0
    const { addrs, lens } = this.#sg
    while (o < data.length) {
      if (this.#seg >= lens.length) throw new RangeError('scatter-gather list too short for the output')
      const n = Math.min(lens[this.#seg] - this.#off, data.length - o)
      copyIn(this.#mem, addrs[this.#seg] + this.#off, data.subarray(o, o + n))
      o += n
      this.#off += n
      if (this.#off === lens[this.#seg]) {
        this.#seg++
        this.#off = 0
      }
    }
  }
}

/** Calls fn(addr, len) over the first `len` bytes of an Sg. */
function eachSeg (sg: Sg, len: number, fn: (addr: number, n: number) => void): void {
  for (let i = 0; len > 0 && i < sg.lens.length; i++) {
    const n = Math.min(sg.lens[i], len)
    if (n > 0) fn(sg.addrs[i], n)
    len -= n
  }
}

/**
 * A cipher is fed runs of at least this many bytes: each update call costs about as much
 * as ciphering 4 KiB, so a buffer scattered over 4 KiB frames, fed a frame at a time,
 * ran at a third of the speed of one fed whole (bench/RESULTS.md).
 */
const RUN_BYTES = 64 * 1024
const runStage = new Uint8Array(RUN_BYTES)
/**
 * A cipher is fed runs of at most this many bytes: it returns each run's output in a fresh
 * buffer, which Node zeroes, the cipher fills and the engine then copies into shared
 * memory. Over 1 MiB in one call those are three passes through memory; over 256 KiB
 * pieces the buffer is still in the cache for the second and third (one thread: 2.84-2.92
 * GB/s whole, 3.03-3.12 in 256 KiB pieces, thirteenth session).
 */
export const MAX_RUN_BYTES = 256 * 1024

/**
 * Calls fn over the first `len` bytes of an Sg in order, in views of at least RUN_BYTES
 * where the data allows: a long segment (or a last one with nothing gathered before it) as
 * it is, short ones gathered into a private buffer. fn must be done with its view when it
 * returns (the buffer is reused).
 */
function eachRun (mem: Uint8Array, sg: Sg, len: number, fn: (view: Uint8Array) => void): void {
  let staged = 0
  let left = len
  const flush = (): void => {
    if (staged > 0) fn(runStage.subarray(0, staged))
    staged = 0
  }
  eachSeg(sg, len, (addr, n) => {
    left -= n
    // the last segment with nothing staged before it is a run as it is: copying it into
    // the stage would not save a call
    if (n >= RUN_BYTES || (staged === 0 && left === 0)) {
      flush()
      for (let o = 0; o < n; o += MAX_RUN_BYTES) fn(mem.subarray(addr + o, addr + Math.min(n, o + MAX_RUN_BYTES)))
      return
    }
    for (let o = 0; o < n;) {
      const k = Math.min(RUN_BYTES - staged, n - o)
      copyOut(runStage, staged, mem, addr + o, k)
      staged += k
      o += k
      if (staged === RUN_BYTES) flush()
    }
  })
  flush()
}

/**
 * Lockstep pieces of two Sgs over their first `len` bytes: fn(srcAddr, dstAddr, n, off)
 * for each run where neither changes segment, in order or in reverse.
 */
function pieces (a: Sg, b: Sg, len: number, reverse: boolean, fn: (pa: number, pb: number, n: number, off: number) => boolean | undefined): void {
  const runs: number[] = [] // quadruples: pa, pb, n, off
  let ia = 0
  let ib = 0
  let oa = 0
  let ob = 0
  for (let off = 0; off < len;) {
    while (ia < a.lens.length && oa === a.lens[ia]) { ia++; oa = 0 }
    while (ib < b.lens.length && ob === b.lens[ib]) { ib++; ob = 0 }
    if (ia === a.lens.length || ib === b.lens.length) throw new RangeError('scatter-gather list too short')
    const n = Math.min(a.lens[ia] - oa, b.lens[ib] - ob, len - off)
    runs.push(a.addrs[ia] + oa, b.addrs[ib] + ob, n, off)
    oa += n
    ob += n
    off += n
  }
  const count = runs.length / 4
  for (let k = 0; k < count; k++) {
    const r = 4 * (reverse ? count - 1 - k : k)
    if (fn(runs[r], runs[r + 1], runs[r + 2], runs[r + 3]) === true) return
  }
}

const Overlap = { NONE: 0, FORWARD: 1, BACKWARD: 2, TANGLED: 3 } as const
type Overlap = typeof Overlap[keyof typeof Overlap]

/** Intervals as [phys start, phys end, logical offset] triples for the first len bytes. */
function intervals (sg: Sg, len: number): number[] {
  const out: number[] = []
  let off = 0
  eachSeg(sg, len, (addr, n) => { out.push(addr, addr + n, off); off += n })
  return out
}

const BRUTE_FORCE_PAIRS = 1 << 16

/**
 * How a stream that reads src[0..slen) and writes dst[0..dlen) front to back relates to
 * itself in physical memory. For a physical byte that is src offset j and dst offset i,
 * a front-to-back pass is safe when every shared byte has i >= j (it is read before it is
 * overwritten), a back-to-front pass when every one has i <= j. Within one pair of
 * segments i - j is constant, so each overlapping pair gives one sign. TANGLED: neither
 * order is safe (or there were too many pairs to check), gather src first.
 */
function classifyOverlap (src: Sg, slen: number, dst: Sg, dlen: number): Overlap {
  const s = intervals(src, slen)
  const d = intervals(dst, dlen)
  const ns = s.length / 3
  const nd = d.length / 3
  if (ns * nd > BRUTE_FORCE_PAIRS) return anyOverlap(s, d) ? Overlap.TANGLED : Overlap.NONE
  let fwd = false
  let back = false
  let same = false
  for (let x = 0; x < s.length; x += 3) {
    for (let y = 0; y < d.length; y += 3) {
      if (s[x] < d[y + 1] && d[y] < s[x + 1]) {
        const delta = (d[y + 2] - d[y]) - (s[x + 2] - s[x])
        if (delta > 0) fwd = true
        else if (delta < 0) back = true
        else same = true
      }
    }
  }
  // delta 0 (a byte at the same offset in both, as in place) is safe in either order
  if (fwd && back) return Overlap.TANGLED
  if (back) return Overlap.BACKWARD
  return fwd || same ? Overlap.FORWARD : Overlap.NONE
}

/**
 * The intervals of v (start, end, offset triples) as [start, end] pairs ordered by start.
 * A long scattered job has hundreds of segments on each side, so this sorts packed
 * numbers (start * 2**k + index) natively rather than through a comparator. They stay
 * exact: a start is below 2**32 (physical memory is at most 4 GiB, the configuration's
 * cap and Node 20's largest Uint8Array) and a job's segments fit in its ring (1 MiB for
 * every device), so the index needs under 2**17.
 */
function byStart (v: number[]): number[] {
  const n = v.length / 3
  const scale = 2 ** Math.ceil(Math.log2(n + 1))
  const keys = new Float64Array(n)
  for (let i = 0; i < n; i++) keys[i] = v[3 * i] * scale + i
  keys.sort()
  const out: number[] = new Array(2 * n)
  for (let k = 0; k < n; k++) {
    const i = keys[k] % scale
    out[2 * k] = v[3 * i]
    out[2 * k + 1] = v[3 * i + 1]
  }
  return out
}

/** Sort both interval lists by start and sweep; correct even when a list overlaps itself. */
function anyOverlap (s: number[], d: number[]): boolean {
  const a = byStart(s)
  const b = byStart(d)
  let i = 0
  let j = 0
  while (i < a.length && j < b.length) {
    if (a[i + 1] <= b[j]) i += 2
    else if (b[j + 1] <= a[i]) j += 2
    else return true
  }
  return false
}

function dstShort (dstLen: number, need: number): EngineResult | undefined {
  return dstLen < need ? done(Status.PAGE_FAULT, 0, dstLen) : undefined
}

function memmove (mem: Uint8Array, job: EngineJob, dstLen: number): EngineResult {
  const n = Math.min(job.size, dstLen)
  const { src, dst } = job
  if (src.lens.length === 1 && dst.lens.length === 1) {
    // one run each: a memmove
    moveWithin(mem, dst.addrs[0], src.addrs[0], n)
  } else {
    const ov = classifyOverlap(src, n, dst, n)
    if (ov === Overlap.TANGLED) {
      new SgWriter(mem, dst).write(gather(mem, src, n, true))
    } else {
      pieces(src, dst, n, ov === Overlap.BACKWARD, (ps, pd, len) => {
        moveWithin(mem, pd, ps, len)
        return undefined
      })
    }
  }
  return n < job.size ? done(Status.PAGE_FAULT, n, n) : done(Status.SUCCESS, n)
}

const FILL_BLOCK = 4096

function fill (mem: Uint8Array, job: EngineJob, dstLen: number): EngineResult {
  const n = Math.min(job.size, dstLen)
  const pat = fillPattern(opArgs(job))
  if (pat.every(x => x === pat[0])) {
    eachSeg(job.dst, n, (addr, len) => { mem.fill(pat[0], addr, addr + len) })
  } else {
    // A block of whole patterns plus one spare, so any phase is a subarray of it.
    const block = new Uint8Array(FILL_BLOCK + FILL_PATTERN_SIZE)
    for (let i = 0; i < block.length; i++) block[i] = pat[i % FILL_PATTERN_SIZE]
    let off = 0
    eachSeg(job.dst, n, (addr, len) => {
      const phase = off % FILL_PATTERN_SIZE
      for (let k = 0; k < len; k += FILL_BLOCK) {
        const m = Math.min(FILL_BLOCK, len - k)
        copyIn(mem, addr + k, block.subarray(phase, phase + m))
      }
      off += len
    })
  }
  return n < job.size ? done(Status.PAGE_FAULT, n, n) : done(Status.SUCCESS, n)
}

function compare (mem: Uint8Array, job: EngineJob): EngineResult {
  let diff = -1
  pieces(job.src, job.dst, job.size, false, (pa, pb, n, off) => {
    const a = mem.subarray(pa, pa + n)
    const b = mem.subarray(pb, pb + n)
    if (Buffer.compare(a, b) === 0) return undefined
    // bisect to the first differing byte with native compares
    let lo = 0
    let hi = n
    while (hi - lo > 1) {
      const mid = (lo + hi) >>> 1
      if (Buffer.compare(a.subarray(lo, mid), b.subarray(lo, mid)) !== 0) hi = mid
      else lo = mid
    }
    diff = off + lo
    return true
  })
  return diff < 0 ? done(Status.SUCCESS, job.size, 0, 0) : done(Status.SUCCESS, job.size, diff, 1)
}

function crc (mem: Uint8Array, job: EngineJob): EngineResult {
  let c = crcSeed(opArgs(job))
  eachSeg(job.src, job.size, (addr, n) => { c = crc32(mem.subarray(addr, addr + n), c) })
  return done(Status.SUCCESS, job.size, c)
}

function sha256 (mem: Uint8Array, job: EngineJob, dstLen: number): EngineResult {
  const short = dstShort(dstLen, SHA256_SIZE)
  if (short !== undefined) return short
  const src = job.src
  let digest: Uint8Array
  if (src.lens.length > 0 && src.lens[0] >= job.size) {
    // One segment: the one-shot hash makes no Hash object, 3.7 us a 4 KiB job against
    // 4.2 us for createHash, update and digest (one thread, thirteenth session).
    digest = hash('sha256', mem.subarray(src.addrs[0], src.addrs[0] + job.size), 'buffer')
  } else {
    const h = createHash('sha256')
    eachSeg(src, job.size, (addr, n) => { h.update(mem.subarray(addr, addr + n)) })
    digest = h.digest()
  }
  new SgWriter(mem, job.dst).write(digest)
  return done(Status.SUCCESS, job.size)
}

function isTooLarge (e: unknown): boolean {
  return (e as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE'
}

/**
 * Runs a zlib transform whose output size is unknown in advance, never producing more
 * than the translated destination (plus one byte to tell "more"): a tenant's dst_size
 * alone cannot make the engine allocate. Output past a short dst is a fault at its end,
 * as hardware streaming its output would hit it, before learning the total.
 */
function zlibOp (mem: Uint8Array, job: EngineJob, dstLen: number, run: (input: Uint8Array, max: number) => Buffer): EngineResult {
  const limit = Math.min(job.dstSize, dstLen)
  const over = (): EngineResult => limit === job.dstSize ? done(Status.OUTPUT_OVERFLOW) : done(Status.PAGE_FAULT, 0, dstLen)
  let out: Buffer
  try {
    out = run(gather(mem, job.src, job.size), Math.max(1, limit))
  } catch (e) {
    if (isTooLarge(e)) return over()
    // anything else zlib rejects (Z_DATA_ERROR, Z_BUF_ERROR for a truncated stream) is bad input
    return done(Status.DATA_ERROR)
  }
  if (out.length > limit) return over()
  new SgWriter(mem, job.dst).write(out)
  return done(Status.SUCCESS, job.size, out.length)
}

function deflate (mem: Uint8Array, job: EngineJob, dstLen: number): EngineResult {
  const level = deflateLevel(opArgs(job))
  if (level > MAX_DEFLATE_LEVEL) return done(Status.INVALID_FIELD)
  return zlibOp(mem, job, dstLen, (input, max) => zlib.deflateRawSync(input, { level, maxOutputLength: max }))
}

function inflate (mem: Uint8Array, job: EngineJob, dstLen: number): EngineResult {
  return zlibOp(mem, job, dstLen, (input, max) => zlib.inflateRawSync(input, { maxOutputLength: max }))
}

function keyAndIv (mem: Uint8Array, job: EngineJob): [Uint8Array, Uint8Array] {
  if (job.key === undefined || job.iv === undefined) throw new RangeError('ENCRYPT/DECRYPT need key and iv lists')
  return [gather(mem, job.key, AES_KEY_SIZE), gather(mem, job.iv, AES_IV_SIZE)]
}

function encrypt (mem: Uint8Array, job: EngineJob, dstLen: number): EngineResult {
  const outLen = job.size + AES_TAG_SIZE
  if (job.dstSize < outLen) return done(Status.OUTPUT_OVERFLOW)
  const short = dstShort(dstLen, outLen)
  if (short !== undefined) return short
  const [key, iv] = keyAndIv(mem, job)
  const cipher = createCipheriv('aes-256-gcm', key, iv)
  const w = new SgWriter(mem, job.dst)
  const src = job.src
  // One segment up to a run: one update reads it all before any ciphertext is written,
  // so no overlap matters, and the view goes to the cipher as it is. The checks and the
  // copy into a run were about a sixth of an engine's time per 4 KiB job (eleventh session).
  const oneSegment = src.lens.length > 0 && src.lens[0] >= job.size
  if (oneSegment && job.size <= MAX_RUN_BYTES) {
    w.write(cipher.update(mem.subarray(src.addrs[0], src.addrs[0] + job.size)))
  } else if (classifyOverlap(src, job.size, job.dst, outLen) <= Overlap.FORWARD) {
    // GCM emits exactly as many bytes as each update takes, so streaming run by run is
    // safe whenever no ciphertext lands on plaintext not yet read.
    eachRun(mem, job.src, job.size, view => { w.write(cipher.update(view)) })
  } else if (oneSegment) {
    // ciphertext would land on plaintext not yet read: one update, which reads it all first
    w.write(cipher.update(mem.subarray(src.addrs[0], src.addrs[0] + job.size)))
  } else {
    w.write(cipher.update(gather(mem, job.src, job.size, true)))
  }
  w.write(cipher.final())
  w.write(cipher.getAuthTag())
  return done(Status.SUCCESS, job.size, outLen)
}

function decrypt (mem: Uint8Array, job: EngineJob, dstLen: number): EngineResult {
  if (job.size < AES_TAG_SIZE) return done(Status.INVALID_FIELD)
  const outLen = job.size - AES_TAG_SIZE
  if (job.dstSize < outLen) return done(Status.OUTPUT_OVERFLOW)
  const short = dstShort(dstLen, outLen)
  if (short !== undefined) return short
  const [key, iv] = keyAndIv(mem, job)
  // the tag is the last 16 bytes, wherever they fall in the list
  const tag = tail(mem, job.src, job.size, AES_TAG_SIZE)
  const decipher = createDecipheriv('aes-256-gcm', key, iv)
  decipher.setAuthTag(tag)
  // Plaintext is held until the tag checks out: a forged ciphertext must not put
  // attacker-chosen bytes into the destination. That also makes any src/dst overlap safe.
  const parts: Buffer[] = []
  eachRun(mem, job.src, outLen, view => { parts.push(decipher.update(view)) })
  try {
    parts.push(decipher.final())
  } catch {
    return done(Status.DATA_ERROR)
  }
  const w = new SgWriter(mem, job.dst)
  for (const p of parts) w.write(p)
  return done(Status.SUCCESS, job.size, outLen)
}

/** A copy of bytes [size - n, size) of an Sg. */
function tail (mem: Uint8Array, sg: Sg, size: number, n: number): Uint8Array {
  const out = new Uint8Array(n)
  let off = 0
  let o = 0
  eachSeg(sg, size, (addr, len) => {
    const from = Math.max(size - n, off)
    if (from < off + len) {
      const piece = mem.subarray(addr + (from - off), addr + len)
      out.set(piece, o)
      o += piece.length
    }
    off += len
  })
  return out
}

/** Runs one job. Never throws for anything the tenant controls; see the module comment. */
export function runOp (mem: Uint8Array, job: EngineJob): EngineResult {
  const srcLen = checkSg(mem, job.src, 'src')
  const dstLen = checkSg(mem, job.dst, 'dst')
  if (job.key !== undefined) checkSg(mem, job.key, 'key')
  if (job.iv !== undefined) checkSg(mem, job.iv, 'iv')
  const op = job.opcode
  const readsSrc = op >= Opcode.MEMMOVE && op <= Opcode.DECRYPT && op !== Opcode.FILL
  if (readsSrc && srcLen < job.size) throw new RangeError(`src holds ${srcLen} bytes, size is ${job.size}`)
  switch (op) {
    case Opcode.NOOP: return done(Status.SUCCESS)
    case Opcode.MEMMOVE: return memmove(mem, job, dstLen)
    case Opcode.FILL: return fill(mem, job, dstLen)
    case Opcode.COMPARE:
      if (dstLen < job.size) throw new RangeError(`COMPARE dst holds ${dstLen} bytes, size is ${job.size}`)
      return compare(mem, job)
    case Opcode.CRC32: return crc(mem, job)
    case Opcode.SHA256: return sha256(mem, job, dstLen)
    case Opcode.DEFLATE: return deflate(mem, job, dstLen)
    case Opcode.INFLATE: return inflate(mem, job, dstLen)
    case Opcode.ENCRYPT: return encrypt(mem, job, dstLen)
    case Opcode.DECRYPT: return decrypt(mem, job, dstLen)
    default: return done(Status.INVALID_OPCODE)
  }
}
