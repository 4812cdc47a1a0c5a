import t from 'tap'
import { createCipheriv, createHash, randomBytes } from 'node:crypto'
import zlib from 'node:zlib'
import { OP_ARGS_SIZE, Opcode, Status, writeU32 } from '../../src/hw/descriptor.ts'
import { crc32, crc32Js, runOp, type EngineJob, type Sg } from '../../src/hw/engine-ops.ts'
import { PAGE_SIZE, PhysMem } from '../../src/hw/phys-mem.ts'

const mem = new PhysMem(40 << 20)
const M = mem.bytes
const SIZES = [1, 2, 63, 4095, 4096, 4097, 65536 + 13, 1 << 20]

/** A virtual buffer on shuffled, pairwise non-adjacent frames, starting `off` into its first frame. */
class VBuf {
  readonly frames: number[]
  readonly len: number
  readonly off: number
  constructor (len: number, off = 0) {
    this.len = len
    this.off = off
    const n = Math.ceil((off + len) / PAGE_SIZE) || 1
    const all: number[] = []
    for (let i = 0; i < 2 * n; i++) {
      const r = mem.alloc()
      if (!r.ok) throw new Error('out of frames')
      all.push(r.value)
    }
    // every other frame, so no two are physically adjacent; the rest go back
    this.frames = all.filter((_, i) => i % 2 === 0)
    for (let i = 1; i < all.length; i += 2) mem.put(all[i])
    for (let i = this.frames.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [this.frames[i], this.frames[j]] = [this.frames[j], this.frames[i]]
    }
  }

  phys (at: number): number {
    const v = this.off + at
    return this.frames[Math.floor(v / PAGE_SIZE)] * PAGE_SIZE + (v % PAGE_SIZE)
  }

  sg (at = 0, len = this.len - at): Sg {
    const addrs: number[] = []
    const lens: number[] = []
    while (len > 0) {
      const p = this.phys(at)
      const n = Math.min(len, PAGE_SIZE - (p % PAGE_SIZE))
      addrs.push(p)
      lens.push(n)
      at += n
      len -= n
    }
    return { addrs, lens }
  }

  write (data: Uint8Array, at = 0): void {
    const sg = this.sg(at, data.length)
    let o = 0
    for (let i = 0; i < sg.lens.length; i++) {
      M.set(data.subarray(o, o + sg.lens[i]), sg.addrs[i])
      o += sg.lens[i]
    }
  }

  read (at = 0, len = this.len - at): Buffer {
    const out = Buffer.alloc(len)
    const sg = this.sg(at, len)
    let o = 0
    for (let i = 0; i < sg.lens.length; i++) {
      out.set(M.subarray(sg.addrs[i], sg.addrs[i] + sg.lens[i]), o)
      o += sg.lens[i]
    }
    return out
  }

  free (): void {
    for (const f of this.frames) mem.put(f)
  }
}

const bufs: VBuf[] = []
function vbuf (len: number, off = 0): VBuf {
  const b = new VBuf(len, off)
  bufs.push(b)
  return b
}
function freeAll (): void {
  for (const b of bufs.splice(0)) b.free()
}
t.afterEach(freeAll)

function args (bytes: number[] = []): Uint8Array {
  const a = new Uint8Array(OP_ARGS_SIZE)
  a.set(bytes)
  return a
}

const EMPTY: Sg = { addrs: [], lens: [] }
function job (init: Partial<EngineJob> & { opcode: number, size: number }): EngineJob {
  return { flags: 0, dstSize: 0, args: args(), src: EMPTY, dst: EMPTY, ...init }
}

/** Semi-compressible bytes: runs of a small alphabet with random noise. */
function texty (n: number): Buffer {
  const b = randomBytes(n)
  for (let i = 0; i < n; i++) if (b[i] < 200) b[i] = 97 + (b[i] % 7)
  return b
}

function unaligned (i: number): number {
  return [1, 7, 123, 2049, 4095][i % 5]
}

t.test('crc32: table-driven matches zlib and the check value', async t => {
  t.equal(crc32Js(Buffer.from('123456789')), 0xCBF43926)
  t.equal(crc32(Buffer.from('123456789')), 0xCBF43926)
  t.equal(crc32Js(new Uint8Array(0), 0x1234), 0x1234, 'empty input keeps the seed')
  const native = (zlib as unknown as { crc32?: (d: Uint8Array, s?: number) => number }).crc32
  const data = randomBytes(70000)
  for (const len of [0, 1, 7, 8, 9, 15, 16, 17, 1000, 4096, 70000]) {
    for (const seed of [0, 1, 0xFFFFFFFF, 0xDEADBEEF]) {
      const v = crc32Js(data.subarray(0, len), seed)
      if (native !== undefined) t.equal(v, native(data.subarray(0, len), seed), `len ${len} seed ${seed}`)
      t.equal(crc32Js(data.subarray(3, len + 3), seed), crc32(data.subarray(3, len + 3), seed))
    }
  }
  const a = data.subarray(0, 1234)
  const b = data.subarray(1234, 50000)
  t.equal(crc32Js(b, crc32Js(a)), crc32Js(data.subarray(0, 50000)), 'a running seed chains')
})

t.test('every opcode byte-exact over scattered unaligned frames', async t => {
  for (const [i, size] of SIZES.entries()) {
    t.test(`size ${size}`, async t => {
      const input = texty(size)
      const src = vbuf(size, unaligned(i))
      src.write(input)

      t.same(runOp(M, job({ opcode: Opcode.NOOP, size })), { status: Status.SUCCESS, result: 0, bytesCompleted: 0, value: 0 }, 'NOOP')

      const mv = vbuf(size, unaligned(i + 1))
      t.same(runOp(M, job({ opcode: Opcode.MEMMOVE, size, src: src.sg(), dst: mv.sg() })),
        { status: Status.SUCCESS, result: 0, bytesCompleted: size, value: 0 })
      t.ok(mv.read().equals(input), 'MEMMOVE')

      const pat = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
      const fl = vbuf(size, unaligned(i + 2))
      t.equal(runOp(M, job({ opcode: Opcode.FILL, size, args: args(pat), dst: fl.sg() })).status, Status.SUCCESS)
      const want = Buffer.alloc(size)
      for (let k = 0; k < size; k++) want[k] = pat[k % 8]
      t.ok(fl.read().equals(want), 'FILL with an 8-byte pattern')
      t.equal(runOp(M, job({ opcode: Opcode.FILL, size, args: args([9, 9, 9, 9, 9, 9, 9, 9]), dst: fl.sg() })).status, Status.SUCCESS)
      t.ok(fl.read().equals(Buffer.alloc(size, 9)), 'FILL with a one-byte pattern')

      t.same(runOp(M, job({ opcode: Opcode.COMPARE, size, src: src.sg(), dst: mv.sg() })),
        { status: Status.SUCCESS, result: 0, bytesCompleted: size, value: 0 }, 'COMPARE equal')
      for (const at of new Set([0, size - 1, Math.floor(size / 2), Math.min(size - 1, 4096 - unaligned(i + 1))])) {
        const copy = vbuf(size, unaligned(i + 3))
        const changed = Buffer.from(input)
        changed[at] ^= 0x40
        copy.write(changed)
        t.same(runOp(M, job({ opcode: Opcode.COMPARE, size, src: src.sg(), dst: copy.sg() })),
          { status: Status.SUCCESS, result: 1, bytesCompleted: size, value: at }, `COMPARE differs at ${at}`)
      }

      const seed = 0x9E3779B9
      const crcWant = crc32Js(input, seed)
      t.same(runOp(M, job({ opcode: Opcode.CRC32, size, args: [0, 1, 2, 3].map(k => (seed >>> (8 * k)) & 0xFF).reduce((a, v, k) => { a[k] = v; return a }, args()), src: src.sg() })),
        { status: Status.SUCCESS, result: 0, bytesCompleted: size, value: crcWant }, 'CRC32 with a seed')

      const h = vbuf(32, 4090)
      t.equal(runOp(M, job({ opcode: Opcode.SHA256, size, src: src.sg(), dst: h.sg() })).status, Status.SUCCESS)
      t.ok(h.read().equals(createHash('sha256').update(input).digest()), 'SHA256, digest across a frame boundary')

      const level = [0, 1, 6, 9][i % 4]
      const zWant = zlib.deflateRawSync(input, { level })
      const z = vbuf(zWant.length + 100, unaligned(i + 4))
      t.same(runOp(M, job({ opcode: Opcode.DEFLATE, size, dstSize: z.len, args: args([level]), src: src.sg(), dst: z.sg() })),
        { status: Status.SUCCESS, result: 0, bytesCompleted: size, value: zWant.length })
      t.ok(z.read(0, zWant.length).equals(zWant), `DEFLATE level ${level}`)

      const inf = vbuf(size, unaligned(i))
      t.same(runOp(M, job({ opcode: Opcode.INFLATE, size: zWant.length, dstSize: size, src: z.sg(0, zWant.length), dst: inf.sg() })),
        { status: Status.SUCCESS, result: 0, bytesCompleted: zWant.length, value: size })
      t.ok(inf.read().equals(input), 'INFLATE, output exactly dst_size')

      const keyBytes = randomBytes(32)
      const ivBytes = randomBytes(12)
      const kv = vbuf(44, 4080) // key and iv both straddle a frame boundary
      kv.write(keyBytes, 0)
      kv.write(ivBytes, 32)
      const encArgs = args()
      const c = createCipheriv('aes-256-gcm', keyBytes, ivBytes)
      const eWant = Buffer.concat([c.update(input), c.final(), c.getAuthTag()])
      const e = vbuf(size + 16, unaligned(i + 2))
      t.same(runOp(M, job({ opcode: Opcode.ENCRYPT, size, dstSize: size + 16, args: encArgs, src: src.sg(), dst: e.sg(), key: kv.sg(0, 32), iv: kv.sg(32, 12) })),
        { status: Status.SUCCESS, result: 0, bytesCompleted: size, value: size + 16 })
      t.ok(e.read().equals(eWant), 'ENCRYPT = ciphertext || tag')

      const dcr = vbuf(size, unaligned(i + 3))
      t.same(runOp(M, job({ opcode: Opcode.DECRYPT, size: size + 16, dstSize: size, args: encArgs, src: e.sg(), dst: dcr.sg(), key: kv.sg(0, 32), iv: kv.sg(32, 12) })),
        { status: Status.SUCCESS, result: 0, bytesCompleted: size + 16, value: size })
      t.ok(dcr.read().equals(input), 'DECRYPT')
    })
  }
})

t.test('MEMMOVE with overlap behaves as memmove', async t => {
  for (const size of [1, 63, 4097, 65536 + 13, 1 << 20]) {
    for (const shift of [1, 5, 4096, 4099, size > 8 ? size - 3 : 1]) {
      for (const forward of [true, false]) {
        const b = vbuf(size + shift, 77)
        const init = randomBytes(size + shift)
        b.write(init)
        const [s, d] = forward ? [0, shift] : [shift, 0]
        const r = runOp(M, job({ opcode: Opcode.MEMMOVE, size, src: b.sg(s, size), dst: b.sg(d, size) }))
        t.equal(r.status, Status.SUCCESS)
        const want = Buffer.from(init)
        want.copyWithin(d, s, s + size)
        t.ok(b.read().equals(want), `size ${size} shift ${shift} dst ${forward ? 'above' : 'below'} src`)
        freeAll()
      }
    }
  }
  // the same frames in crossed order: neither direction is safe, the engine stages the source
  const a = vbuf(2 * PAGE_SIZE)
  const init = randomBytes(2 * PAGE_SIZE)
  a.write(init)
  const [f0, f1] = a.frames
  const src: Sg = { addrs: [f0 * PAGE_SIZE, f1 * PAGE_SIZE], lens: [PAGE_SIZE, PAGE_SIZE] }
  const dst: Sg = { addrs: [f1 * PAGE_SIZE + 100, f0 * PAGE_SIZE], lens: [PAGE_SIZE - 100, PAGE_SIZE] }
  t.equal(runOp(M, job({ opcode: Opcode.MEMMOVE, size: 2 * PAGE_SIZE - 100, src, dst })).status, Status.SUCCESS)
  t.ok(M.subarray(f1 * PAGE_SIZE + 100, f1 * PAGE_SIZE + PAGE_SIZE).every((v, k) => v === init[k]), 'crossed frames, first piece')
  t.ok(M.subarray(f0 * PAGE_SIZE, f0 * PAGE_SIZE + PAGE_SIZE - 100).every((v, k) => v === init[PAGE_SIZE - 100 + k]), 'crossed frames, second piece')
  // one contiguous run each way
  const base = a.frames[0] * PAGE_SIZE
  M.set(init.subarray(0, PAGE_SIZE), base)
  runOp(M, job({ opcode: Opcode.MEMMOVE, size: 1000, src: { addrs: [base], lens: [1000] }, dst: { addrs: [base + 10], lens: [1000] } }))
  t.ok(Buffer.from(M.subarray(base + 10, base + 1010)).equals(init.subarray(0, 1000)), 'single run overlap')
})

t.test('ENCRYPT in place and overlapping', async t => {
  const size = 3 * PAGE_SIZE + 5
  const key = randomBytes(32)
  const iv = randomBytes(12)
  const kv = vbuf(44)
  kv.write(key)
  kv.write(iv, 32)
  const input = randomBytes(size)
  const c = createCipheriv('aes-256-gcm', key, iv)
  const want = Buffer.concat([c.update(input), c.final(), c.getAuthTag()])
  for (const shift of [0, 5, -5]) {
    const b = vbuf(size + 16 + 10, 33)
    const s = shift < 0 ? 5 : 0
    const d = s + shift
    b.write(input, s)
    const r = runOp(M, job({ opcode: Opcode.ENCRYPT, size, dstSize: size + 16, src: b.sg(s, size), dst: b.sg(d, size + 16), key: kv.sg(0, 32), iv: kv.sg(32, 12) }))
    t.equal(r.status, Status.SUCCESS)
    t.ok(b.read(d, size + 16).equals(want), `dst = src ${shift >= 0 ? '+' : '-'} ${Math.abs(shift)}`)
  }
  // one segment each (a source in one physical run takes the engine's direct path), and
  // back again in place
  const small = input.subarray(0, 2000)
  const c1 = createCipheriv('aes-256-gcm', key, iv)
  const sealed = Buffer.concat([c1.update(small), c1.final(), c1.getAuthTag()])
  for (const shift of [0, 5, -5]) {
    const page = vbuf(PAGE_SIZE).frames[0] * PAGE_SIZE
    const s = page + 100
    const d = s + shift
    M.set(small, s)
    const r = runOp(M, job({ opcode: Opcode.ENCRYPT, size: 2000, dstSize: 2016, src: { addrs: [s], lens: [2000] }, dst: { addrs: [d], lens: [2016] }, key: kv.sg(0, 32), iv: kv.sg(32, 12) }))
    t.equal(r.status, Status.SUCCESS)
    t.ok(Buffer.from(M.subarray(d, d + 2016)).equals(sealed), `one run, dst = src ${shift >= 0 ? '+' : '-'} ${Math.abs(shift)}`)
    const back = runOp(M, job({ opcode: Opcode.DECRYPT, size: 2016, dstSize: 2000, src: { addrs: [d], lens: [2016] }, dst: { addrs: [d], lens: [2000] }, key: kv.sg(0, 32), iv: kv.sg(32, 12) }))
    t.equal(back.status, Status.SUCCESS)
    t.ok(Buffer.from(M.subarray(d, d + 2000)).equals(small), 'decrypted in place')
  }
})

t.test('ENCRYPT of one long segment, streamed in runs where no overlap forbids it', async t => {
  // A private memory with one physical run per buffer: past MAX_RUN_BYTES (256 KiB) the
  // engine ciphers in runs when no ciphertext can land on plaintext not yet read, and in
  // one update when it can (dst above src and overlapping).
  const R = new Uint8Array(new SharedArrayBuffer(4 << 20))
  const size = 600_000 + 7
  const key = randomBytes(32)
  const iv = randomBytes(12)
  R.set(key, 0)
  R.set(iv, 32)
  const input = randomBytes(size)
  const c = createCipheriv('aes-256-gcm', key, iv)
  const want = Buffer.concat([c.update(input), c.final(), c.getAuthTag()])
  const s = 1 << 20
  for (const shift of [0, 5, -5, -300_001, 300_001, 1 << 20, -(1 << 20) + 64]) {
    R.fill(0x5A, 64)
    R.set(input, s)
    const d = s + shift
    const r = runOp(R, job({ opcode: Opcode.ENCRYPT, size, dstSize: size + 16, src: { addrs: [s], lens: [size] }, dst: { addrs: [d], lens: [size + 16] }, key: { addrs: [0], lens: [32] }, iv: { addrs: [32], lens: [12] } }))
    t.equal(r.status, Status.SUCCESS)
    t.ok(Buffer.from(R.subarray(d, d + size + 16)).equals(want), `dst = src ${shift >= 0 ? '+' : '-'} ${Math.abs(shift)}`)
  }
})

t.test('OUTPUT_OVERFLOW, DATA_ERROR, INVALID_FIELD', async t => {
  const input = randomBytes(10000)
  const src = vbuf(input.length, 9)
  src.write(input)
  const out = vbuf(20000, 3)
  const untouched = (): boolean => out.read().every(v => v === 0)
  const z = zlib.deflateRawSync(input)
  t.ok(z.length > input.length, 'random data does not compress')
  t.same(runOp(M, job({ opcode: Opcode.DEFLATE, size: input.length, dstSize: z.length - 1, args: args([6]), src: src.sg(), dst: out.sg() })),
    { status: Status.OUTPUT_OVERFLOW, result: 0, bytesCompleted: 0, value: 0 }, 'DEFLATE one byte short')
  t.equal(runOp(M, job({ opcode: Opcode.DEFLATE, size: input.length, dstSize: 0, src: src.sg(), dst: out.sg() })).status, Status.OUTPUT_OVERFLOW, 'DEFLATE into nothing')
  t.ok(untouched(), 'an overflow writes nothing')

  const zs = vbuf(z.length)
  zs.write(z)
  t.same(runOp(M, job({ opcode: Opcode.INFLATE, size: z.length, dstSize: input.length - 1, src: zs.sg(), dst: out.sg() })),
    { status: Status.OUTPUT_OVERFLOW, result: 0, bytesCompleted: 0, value: 0 }, 'INFLATE one byte short')
  t.ok(untouched())
  const junk = vbuf(64)
  junk.write(Buffer.from([0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4, 5, 6, 7, 8]))
  t.equal(runOp(M, job({ opcode: Opcode.INFLATE, size: 12, dstSize: 100, src: junk.sg(), dst: out.sg() })).status, Status.DATA_ERROR, 'INFLATE of junk')
  t.equal(runOp(M, job({ opcode: Opcode.INFLATE, size: 100, dstSize: 20000, src: zs.sg(0, 100), dst: out.sg() })).status, Status.DATA_ERROR, 'INFLATE of a truncated stream')
  t.ok(untouched())

  const key = randomBytes(32)
  const iv = randomBytes(12)
  const kv = vbuf(44)
  kv.write(key)
  kv.write(iv, 32)
  const ks = { key: kv.sg(0, 32), iv: kv.sg(32, 12) }
  t.equal(runOp(M, job({ opcode: Opcode.ENCRYPT, size: 100, dstSize: 115, src: src.sg(), dst: out.sg(), ...ks })).status, Status.OUTPUT_OVERFLOW, 'ENCRYPT without room for the tag')
  t.ok(untouched())
  const c = createCipheriv('aes-256-gcm', key, iv)
  const sealed = Buffer.concat([c.update(input), c.final(), c.getAuthTag()])
  const ct = vbuf(sealed.length, 4000)
  ct.write(sealed)
  t.equal(runOp(M, job({ opcode: Opcode.DECRYPT, size: sealed.length, dstSize: input.length - 1, src: ct.sg(), dst: out.sg(), ...ks })).status, Status.OUTPUT_OVERFLOW, 'DECRYPT one byte short')
  t.equal(runOp(M, job({ opcode: Opcode.DECRYPT, size: 15, dstSize: 100, src: ct.sg(), dst: out.sg(), ...ks })).status, Status.INVALID_FIELD, 'DECRYPT shorter than a tag')
  for (const at of [0, input.length - 1, sealed.length - 1, sealed.length - 16]) {
    const bad = Buffer.from(sealed)
    bad[at] ^= 1
    ct.write(bad)
    t.same(runOp(M, job({ opcode: Opcode.DECRYPT, size: sealed.length, dstSize: input.length, src: ct.sg(), dst: out.sg(), ...ks })),
      { status: Status.DATA_ERROR, result: 0, bytesCompleted: 0, value: 0 }, `tampered byte ${at}`)
    t.ok(untouched(), 'no unauthenticated plaintext reaches the destination')
  }
  const wrongKey = vbuf(44)
  wrongKey.write(randomBytes(44))
  ct.write(sealed)
  t.equal(runOp(M, job({ opcode: Opcode.DECRYPT, size: sealed.length, dstSize: input.length, src: ct.sg(), dst: out.sg(), key: wrongKey.sg(0, 32), iv: kv.sg(32, 12) })).status, Status.DATA_ERROR, 'wrong key')
  t.equal(runOp(M, job({ opcode: 0x42, size: 1 })).status, Status.INVALID_OPCODE)
})

t.test('a destination shorter than the output is a fault at its end', async t => {
  const input = texty(3 * PAGE_SIZE)
  const src = vbuf(input.length, 10)
  src.write(input)
  const dst = vbuf(3 * PAGE_SIZE, 10)
  const prefix = dst.sg(0, 5000)
  t.same(runOp(M, job({ opcode: Opcode.MEMMOVE, size: input.length, src: src.sg(), dst: prefix })),
    { status: Status.PAGE_FAULT, result: 0, bytesCompleted: 5000, value: 5000 }, 'MEMMOVE does the prefix')
  t.ok(dst.read(0, 5000).equals(input.subarray(0, 5000)))
  t.ok(dst.read(5000).every(v => v === 0), 'nothing past the prefix')
  t.same(runOp(M, job({ opcode: Opcode.FILL, size: 6000, args: args([1, 1, 1, 1, 1, 1, 1, 1]), dst: dst.sg(0, 10) })),
    { status: Status.PAGE_FAULT, result: 0, bytesCompleted: 10, value: 10 }, 'FILL does the prefix')
  const z = zlib.deflateRawSync(input)
  const out = vbuf(PAGE_SIZE)
  t.same(runOp(M, job({ opcode: Opcode.DEFLATE, size: input.length, dstSize: 1 << 16, args: args([1]), src: src.sg(), dst: out.sg(0, 10) })),
    { status: Status.PAGE_FAULT, result: 0, bytesCompleted: 0, value: 10 }, 'DEFLATE all or nothing')
  t.ok(out.read().every(v => v === 0))
  t.ok(z.length > 10)
  const zsrc = vbuf(z.length, 5)
  zsrc.write(z)
  t.same(runOp(M, job({ opcode: Opcode.INFLATE, size: z.length, dstSize: 2 ** 32 - 1, src: zsrc.sg(), dst: out.sg(0, 100) })),
    { status: Status.PAGE_FAULT, result: 0, bytesCompleted: 0, value: 100 }, 'INFLATE with a huge dst_size stops at the translated prefix')
  t.ok(out.read().every(v => v === 0))
  t.same(runOp(M, job({ opcode: Opcode.INFLATE, size: z.length, dstSize: 100, src: zsrc.sg(), dst: out.sg() })),
    { status: Status.OUTPUT_OVERFLOW, result: 0, bytesCompleted: 0, value: 0 }, 'dst_size smaller than the translated dst: overflow')
  const whole = vbuf(input.length, 1)
  t.same(runOp(M, job({ opcode: Opcode.INFLATE, size: z.length, dstSize: input.length, src: zsrc.sg(), dst: whole.sg() })),
    { status: Status.SUCCESS, result: 0, bytesCompleted: z.length, value: input.length }, 'exactly enough')
  t.ok(whole.read().equals(input))
  t.equal(runOp(M, job({ opcode: Opcode.DEFLATE, size: 10, dstSize: 100, args: args([10]), src: src.sg(), dst: out.sg() })).status, Status.INVALID_FIELD, 'DEFLATE level 10')
  t.same(runOp(M, job({ opcode: Opcode.SHA256, size: 10, src: src.sg(), dst: out.sg(0, 31) })),
    { status: Status.PAGE_FAULT, result: 0, bytesCompleted: 0, value: 31 })
})

t.test('caller bugs throw', async t => {
  const b = vbuf(100)
  t.throws(() => runOp(M, job({ opcode: Opcode.CRC32, size: 101, src: b.sg() })), RangeError, 'src shorter than size')
  t.throws(() => runOp(M, job({ opcode: Opcode.CRC32, size: 1, src: { addrs: [M.length - 1], lens: [2] } })), RangeError, 'outside memory')
  t.throws(() => runOp(M, job({ opcode: Opcode.COMPARE, size: 100, src: b.sg(), dst: b.sg(0, 50) })), RangeError, 'COMPARE second source short')
  t.throws(() => runOp(M, job({ opcode: Opcode.ENCRYPT, size: 10, dstSize: 26, src: b.sg(), dst: b.sg() })), RangeError, 'no key')
  const seedArgs = args()
  writeU32(seedArgs, 0, 5)
  t.equal(runOp(M, job({ opcode: Opcode.CRC32, size: 0, args: seedArgs })).value, 5, 'size 0 keeps the seed')
})

t.test('op_args read from argsAt: a job may point at its whole descriptor', async t => {
  // The device hands runOp its descriptor and DESC.OP_ARGS rather than a view per job
  const at = 24
  const desc = new Uint8Array(64).fill(0xEE)
  const pattern = [1, 2, 3, 4, 5, 6, 7, 8]
  desc.set(pattern, at)
  const dst = vbuf(100)
  t.equal(runOp(M, job({ opcode: Opcode.FILL, size: 100, args: desc, argsAt: at, dst: dst.sg() })).status, Status.SUCCESS)
  t.ok(dst.read().equals(Buffer.from(Array.from({ length: 100 }, (_, i) => pattern[i % 8]))), 'FILL with the pattern at argsAt')
  const src = vbuf(100)
  const input = randomBytes(100)
  src.write(input)
  const seed = 0x12345678
  writeU32(desc, at, seed)
  t.equal(runOp(M, job({ opcode: Opcode.CRC32, size: 100, args: desc, argsAt: at, src: src.sg() })).value, crc32Js(input, seed), 'CRC32 with the seed at argsAt')
})
