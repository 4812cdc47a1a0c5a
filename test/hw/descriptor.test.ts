import t from 'tap'
import fc from 'fast-check'
import {
  ADDR_UNREPRESENTABLE, algorithmTable, CR, CR_SIZE, DESC, DESC_SIZE, Flag, FLAG_RESERVED_MASK, OP_ARGS_SIZE, Opcode,
  STATUS_NOT_COMPLETE, Status, completionFromJson, completionToJson, crcSeed, deflateLevel,
  descriptorFromJson, descriptorToJson, exactAddr, fillPattern, ivAddr, keyAddr, makeCompletion,
  makeDescriptor, opcodeName, readAddr, readCompletion, readDescriptor, statusName, validateInPlace,
  writeCompletion, writeDescriptor, writeU64, type Completion, type Descriptor, type Limits
} from '../../src/hw/descriptor.ts'

const ALL_OPS = new Set<number>(Object.values(Opcode))
const limits: Limits = { maxTransferSize: 1 << 20, maxBatchSize: 32, algorithms: algorithmTable(ALL_OPS) }

function hand (fields: Array<[number, number[]]>, size = DESC_SIZE): Buffer {
  const b = Buffer.alloc(size)
  for (const [off, bytes] of fields) Buffer.from(bytes).copy(b, off)
  return b
}

t.test('offsets and codes are PROTOCOL.md sections 1-4', async t => {
  t.same({ ...DESC }, {
    OPCODE: 0,
    FLAGS: 1,
    RESERVED: 2,
    PASID: 4,
    COMPLETION_ADDR: 8,
    SRC: 16,
    DST: 24,
    SIZE: 32,
    DST_SIZE: 36,
    TAG: 40,
    OP_ARGS: 48
  })
  t.equal(DESC_SIZE, 64)
  t.equal(CR_SIZE, 32)
  t.same({ ...CR }, { STATUS: 0, RESULT: 1, FAULT_INFO: 2, RESERVED: 3, BYTES_COMPLETED: 4, FAULT_ADDR: 8, TAG: 16, VALUE: 24 })
  t.same({ ...Opcode }, {
    NOOP: 0,
    MEMMOVE: 1,
    FILL: 2,
    COMPARE: 3,
    CRC32: 4,
    SHA256: 5,
    DEFLATE: 6,
    INFLATE: 7,
    ENCRYPT: 8,
    DECRYPT: 9,
    BATCH: 0x10,
    DRAIN: 0x11
  })
  t.same({ ...Status }, {
    SUCCESS: 1,
    PAGE_FAULT: 2,
    INVALID_OPCODE: 3,
    INVALID_FIELD: 4,
    OUTPUT_OVERFLOW: 5,
    DATA_ERROR: 6,
    RETRY: 7,
    QUEUE_DISABLED: 8,
    ABORTED: 9,
    BATCH_FAILED: 10
  })
  t.same({ ...Flag }, { COMPLETION_RECORD: 1, NOTIFY: 2, BLOCK_ON_FAULT: 4, FENCE: 8 })
  t.equal(FLAG_RESERVED_MASK, 0xF0)
  t.equal(opcodeName(0x10), 'BATCH')
  t.equal(opcodeName(0x42), undefined)
  t.equal(statusName(0x0A), 'BATCH_FAILED')
})

t.test('readDescriptor parses hand-built little-endian bytes', async t => {
  const b = hand([
    [0, [0x08]], [1, [0x05]], [4, [0x78, 0x56, 0x34, 0x12]],
    [8, [0x40, 0x10, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00]],
    [16, [0x00, 0x10, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00]],
    [24, [0x23, 0x20, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00]],
    [32, [0x00, 0x00, 0x01, 0x00]], [36, [0x10, 0x00, 0x01, 0x00]],
    [40, [0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0xf1]],
    [48, [0x00, 0x30, 0, 0, 0, 0x7f, 0, 0]], [56, [0x0c, 0x30, 0, 0, 0, 0x7f, 0, 0]]
  ])
  const d = readDescriptor(b, 0)
  t.equal(d.opcode, Opcode.ENCRYPT)
  t.equal(d.flags, Flag.COMPLETION_RECORD | Flag.BLOCK_ON_FAULT)
  t.equal(d.reserved, 0)
  t.equal(d.pasid, 0x12345678)
  t.equal(d.completionAddr, 0x7f0000001040)
  t.equal(d.src, 0x7f0000001000)
  t.equal(d.dst, 0x7f0000002023)
  t.equal(d.size, 65536)
  t.equal(d.dstSize, 65536 + 16)
  t.equal(d.tag, 0xf123456789abcdefn)
  t.equal(keyAddr(d.opArgs), 0x7f0000003000)
  t.equal(ivAddr(d.opArgs), 0x7f000000300c)
  t.equal(d.wide, undefined)
  // a private copy: later tenant writes do not reach it
  b[48] = 0xAA
  t.equal(d.opArgs[0], 0)
  const out = Buffer.alloc(64)
  writeDescriptor(out, 0, d)
  b[48] = 0
  t.same(out, b)
})

t.test('descriptors round-trip at any offset', async t => {
  const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })
  fc.assert(fc.property(
    fc.uint8Array({ minLength: DESC_SIZE, maxLength: DESC_SIZE }), fc.nat(100),
    (bytes, off) => {
      const b = Buffer.alloc(off + DESC_SIZE + 7)
      b.set(bytes, off)
      const d = readDescriptor(b, off)
      const o = Buffer.alloc(DESC_SIZE)
      writeDescriptor(o, 0, d)
      return o.equals(Buffer.from(bytes))
    }), { numRuns: 500 })
  fc.assert(fc.property(u64, u64, (src, tag) => {
    const b = Buffer.alloc(DESC_SIZE)
    writeU64(b, DESC.SRC, src)
    writeU64(b, DESC.TAG, tag)
    const d = readDescriptor(b)
    return exactAddr(d, 'src') === src && d.tag === tag &&
      (src < 2n ** 53n ? d.src === Number(src) : d.src === ADDR_UNREPRESENTABLE)
  }), { numRuns: 500 })
})

t.test('an address of 2**53 or more is never a wrong number', async t => {
  const b = Buffer.alloc(DESC_SIZE)
  writeU64(b, DESC.SRC, 2n ** 53n - 1n)
  writeU64(b, DESC.DST, 2n ** 53n)
  writeU64(b, DESC.COMPLETION_ADDR, 0xFFFFFFFFFFFFFFE0n)
  const d = readDescriptor(b)
  t.equal(d.src, Number.MAX_SAFE_INTEGER)
  t.equal(d.dst, ADDR_UNREPRESENTABLE)
  t.equal(d.completionAddr, ADDR_UNREPRESENTABLE)
  t.same(d.wide, { dst: 2n ** 53n, completionAddr: 0xFFFFFFFFFFFFFFE0n })
  t.ok(d.dst > 2 ** 64 - 1 - 4096, 'above every page a table could map')
  t.equal(exactAddr(d, 'dst'), 2n ** 53n)
  const o = Buffer.alloc(DESC_SIZE)
  writeDescriptor(o, 0, d)
  t.same(o, b)
  t.equal(readAddr(b, DESC.DST), ADDR_UNREPRESENTABLE)
  // lost exact value: refuse to write rather than invent one
  t.throws(() => writeDescriptor(o, 0, { ...d, wide: undefined }), RangeError)
  t.throws(() => writeU64(o, 0, 1.5), RangeError)
  t.throws(() => writeU64(o, 0, -1), RangeError)
})

t.test('completion record layout and round trip', async t => {
  const c: Completion = {
    status: Status.PAGE_FAULT,
    result: 1,
    faultInfo: 3,
    bytesCompleted: 0x01020304,
    faultAddr: 0x7f0000005123,
    tag: 0xf123456789abcdefn,
    value: 0xCBF43926
  }
  const b = Buffer.alloc(40, 0xEE)
  writeCompletion(b, 4, c)
  t.same(b.subarray(4, 36), hand([
    [0, [0x02]], [1, [0x01]], [2, [0x03]], [3, [0x00]], [4, [0x04, 0x03, 0x02, 0x01]],
    [8, [0x23, 0x51, 0x00, 0x00, 0x00, 0x7f, 0x00, 0x00]],
    [16, [0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0xf1]],
    [24, [0x26, 0x39, 0xf4, 0xcb, 0, 0, 0, 0]]
  ], CR_SIZE))
  t.equal(b[3], 0xEE, 'nothing before the record')
  t.equal(b[36], 0xEE, 'nothing after the record')
  t.same(readCompletion(b, 4), c)
  const wide = makeCompletion({ status: Status.PAGE_FAULT, faultAddr: 0xFFFFFFFFFFFFF000n })
  writeCompletion(b, 0, wide)
  t.same(readCompletion(b, 0), wide)
})

t.test('writeCompletion writes the status byte last', async t => {
  const raw = new Uint8Array(64).fill(0xEE)
  const writes: Array<[number, number]> = []
  const spy = new Proxy(raw, {
    set (target, key, value) {
      writes.push([Number(key), value as number])
      return Reflect.set(target, key, value)
    }
  })
  writeCompletion(spy, 32, makeCompletion({ status: Status.SUCCESS, tag: 7n, value: 9 }))
  t.same(writes[0], [32 + CR.STATUS, STATUS_NOT_COMPLETE], 'cleared before the body changes')
  t.same(writes.at(-1), [32 + CR.STATUS, Status.SUCCESS], 'set after the body')
  const body = new Set(writes.slice(1, -1).map(w => w[0]))
  t.equal(body.size, CR_SIZE - 1, 'every other byte of the record written in between')
  t.notOk(body.has(32 + CR.STATUS))
})

t.test('op_args accessors', async t => {
  const a = new Uint8Array(OP_ARGS_SIZE)
  a.set([1, 2, 3, 4, 5, 6, 7, 8])
  t.same([...fillPattern(a)], [1, 2, 3, 4, 5, 6, 7, 8])
  t.equal(crcSeed(a), 0x04030201)
  t.equal(deflateLevel(a), 1)
})

t.test('validateInPlace', async t => {
  // a Descriptor's bytes, validated where a device would read them
  const validateDescriptor = (d: Descriptor, l: Limits, opts: { inBatch?: boolean } = {}): number => {
    const b = new Uint8Array(DESC_SIZE)
    writeDescriptor(b, 0, d)
    return validateInPlace(b, l, opts.inBatch === true)
  }
  const good = (init: Partial<Descriptor> & { opcode: number }): Descriptor =>
    makeDescriptor({ size: 4096, src: 0x1000, dst: 0x2000, ...init })
  const withArgs = (opcode: number, bytes: Array<[number, number]>, init: Partial<Descriptor> = {}): Descriptor => {
    const d = good({ opcode, ...init })
    for (const [i, v] of bytes) d.opArgs[i] = v
    return d
  }
  const ok = (d: Descriptor, msg: string, l = limits): void => { t.equal(validateDescriptor(d, l), 0, msg) }
  const bad = (d: Descriptor, status: number, msg: string, l = limits): void => { t.equal(validateDescriptor(d, l), status, msg) }

  for (const op of ALL_OPS) {
    const d = op === Opcode.BATCH ? good({ opcode: op, size: 4 }) : good({ opcode: op, dstSize: 8192 })
    ok(d, `${opcodeName(op)} with zeroed op_args`)
  }
  ok(withArgs(Opcode.FILL, [[0, 1], [7, 0xFF]]), 'FILL pattern bytes 0-7')
  ok(withArgs(Opcode.CRC32, [[0, 1], [3, 0xFF]]), 'CRC32 seed bytes 0-3')
  ok(withArgs(Opcode.DEFLATE, [[0, 9]]), 'DEFLATE level 9')
  ok(withArgs(Opcode.ENCRYPT, [[0, 1], [15, 1]]), 'ENCRYPT key and iv addresses')
  ok(withArgs(Opcode.DECRYPT, [[0, 1], [15, 1]], { size: 16 }), 'DECRYPT of a bare tag')
  ok(good({ opcode: Opcode.NOOP, size: 0 }), 'NOOP reads nothing, size 0 is fine')
  ok(good({ opcode: Opcode.DRAIN, size: 0 }), 'DRAIN reads nothing')
  ok(good({ opcode: Opcode.MEMMOVE, size: limits.maxTransferSize }), 'size = maxTransferSize')
  ok(good({ opcode: Opcode.MEMMOVE, completionAddr: 0x7f0000000020, flags: 0xF }), 'all flags, aligned record')
  ok(good({ opcode: Opcode.MEMMOVE, pasid: 0xFFFFFFFF }), 'pasid is ignored on input')
  ok(good({ opcode: Opcode.BATCH, size: limits.maxBatchSize }), 'BATCH of maxBatchSize')

  bad(good({ opcode: 0x0A }), Status.INVALID_OPCODE, 'unknown opcode 0x0A')
  bad(good({ opcode: 0xFF }), Status.INVALID_OPCODE, 'unknown opcode 0xFF')
  bad(good({ opcode: Opcode.DEFLATE }), Status.INVALID_OPCODE, 'opcode the device does not implement',
    { ...limits, algorithms: algorithmTable([Opcode.MEMMOVE]) })
  t.equal(validateDescriptor(good({ opcode: Opcode.BATCH, size: 2 }), limits, { inBatch: true }),
    Status.INVALID_OPCODE, 'BATCH inside a batch')
  t.equal(validateDescriptor(good({ opcode: Opcode.MEMMOVE }), limits, { inBatch: true }), 0, 'MEMMOVE inside a batch')
  for (const bit of [0x10, 0x20, 0x40, 0x80]) {
    bad(good({ opcode: Opcode.MEMMOVE, flags: bit | 1 }), Status.INVALID_FIELD, `reserved flag bit 0x${bit.toString(16)}`)
  }
  bad(good({ opcode: Opcode.MEMMOVE, reserved: 1 }), Status.INVALID_FIELD, 'reserved byte 2')
  bad(good({ opcode: Opcode.MEMMOVE, reserved: 0x100 }), Status.INVALID_FIELD, 'reserved byte 3')
  for (const a of [0x7f0000000001, 0x7f0000000010, 0x7f000000001F]) {
    bad(good({ opcode: Opcode.MEMMOVE, completionAddr: a, flags: Flag.COMPLETION_RECORD }), Status.INVALID_FIELD, `completion_addr 0x${a.toString(16)} misaligned`)
  }
  bad(good({ opcode: Opcode.MEMMOVE, completionAddr: ADDR_UNREPRESENTABLE, wide: { completionAddr: 2n ** 60n + 8n } }),
    Status.INVALID_FIELD, 'misaligned wide completion_addr')
  ok(good({ opcode: Opcode.MEMMOVE, completionAddr: ADDR_UNREPRESENTABLE, wide: { completionAddr: 2n ** 60n } }),
    'aligned wide completion_addr is left to translation')
  for (const op of [Opcode.MEMMOVE, Opcode.FILL, Opcode.COMPARE, Opcode.CRC32, Opcode.SHA256, Opcode.DEFLATE, Opcode.INFLATE, Opcode.ENCRYPT, Opcode.DECRYPT]) {
    bad(good({ opcode: op, size: 0 }), Status.INVALID_FIELD, `${opcodeName(op)} size 0`)
    bad(good({ opcode: op, size: limits.maxTransferSize + 1 }), Status.INVALID_FIELD, `${opcodeName(op)} size over maxTransferSize`)
  }
  bad(good({ opcode: Opcode.BATCH, size: 0 }), Status.INVALID_FIELD, 'BATCH of 0')
  bad(good({ opcode: Opcode.BATCH, size: limits.maxBatchSize + 1 }), Status.INVALID_FIELD, 'BATCH over maxBatchSize')
  const unused: Array<[number, number]> = [
    [Opcode.NOOP, 0], [Opcode.MEMMOVE, 0], [Opcode.MEMMOVE, 15], [Opcode.FILL, 8], [Opcode.FILL, 15],
    [Opcode.COMPARE, 3], [Opcode.CRC32, 4], [Opcode.CRC32, 15], [Opcode.SHA256, 0], [Opcode.DEFLATE, 1],
    [Opcode.DEFLATE, 15], [Opcode.INFLATE, 0], [Opcode.BATCH, 0], [Opcode.DRAIN, 9]
  ]
  for (const [op, i] of unused) {
    bad(withArgs(op, [[i, 1]], op === Opcode.BATCH ? { size: 2 } : {}), Status.INVALID_FIELD, `${opcodeName(op)} op_args byte ${i} set`)
  }
  bad(withArgs(Opcode.DEFLATE, [[0, 10]]), Status.INVALID_FIELD, 'DEFLATE level 10')
  bad(withArgs(Opcode.DEFLATE, [[0, 0xFF]]), Status.INVALID_FIELD, 'DEFLATE level 255')
  bad(good({ opcode: Opcode.DECRYPT, size: 15 }), Status.INVALID_FIELD, 'DECRYPT shorter than its tag')
})

t.test('JSON forms', async t => {
  const d = makeDescriptor({
    opcode: Opcode.ENCRYPT,
    flags: Flag.COMPLETION_RECORD | Flag.NOTIFY,
    completionAddr: 0x7f0000001040,
    src: 0x7f0000001000,
    dst: 0x7f0000002000,
    size: 100,
    dstSize: 116,
    tag: 0xfedcba9876543210n
  })
  writeU64(d.opArgs, 0, 0x7f0000003000)
  writeU64(d.opArgs, 8, 0x7f000000300c)
  const j = descriptorToJson(d)
  t.same(j, {
    opcode: 'ENCRYPT',
    flags: 3,
    pasid: 0,
    completion_addr: '0x7f0000001040',
    src: '0x7f0000001000',
    dst: '0x7f0000002000',
    size: 100,
    dst_size: 116,
    tag: '0xfedcba9876543210',
    key_addr: '0x7f0000003000',
    iv_addr: '0x7f000000300c'
  })
  const back = descriptorFromJson(JSON.parse(JSON.stringify(j)))
  t.ok(back.ok)
  if (back.ok) t.same(back.value, d)

  const f = descriptorFromJson({ opcode: 'FILL', flags: ['COMPLETION_RECORD', 'FENCE'], dst: 4096, size: 10, pattern: '0x0807060504030201' })
  t.ok(f.ok)
  if (f.ok) {
    t.equal(f.value.flags, 9)
    t.same([...fillPattern(f.value.opArgs)], [1, 2, 3, 4, 5, 6, 7, 8])
    t.same(descriptorToJson(f.value).pattern, '0x807060504030201')
  }
  const c = descriptorFromJson({ opcode: 4, src: '0x10', size: 1, seed: 0xFFFFFFFF })
  t.ok(c.ok && crcSeed(c.value.opArgs) === 0xFFFFFFFF && c.value.opcode === Opcode.CRC32)
  const z = descriptorFromJson({ opcode: 'DEFLATE', level: 9 })
  t.ok(z.ok && descriptorToJson(z.value).level === 9)
  const unknownOp = descriptorFromJson({ opcode: 0x42 })
  t.ok(unknownOp.ok, 'an unknown numeric opcode parses: the device answers INVALID_OPCODE')
  if (unknownOp.ok) t.equal(descriptorToJson(unknownOp.value).opcode, 0x42)

  // stray op_args bytes survive as raw hex
  const raw = makeDescriptor({ opcode: Opcode.MEMMOVE })
  raw.opArgs[15] = 0xAB
  const rj = descriptorToJson(raw)
  t.equal(rj.op_args, '000000000000000000000000000000ab')
  const rb = descriptorFromJson(rj)
  t.ok(rb.ok && rb.value.opArgs[15] === 0xAB)

  const wide = descriptorFromJson({ opcode: 'MEMMOVE', src: '0xffffffffffff0000', dst: '0x20000000000000', size: 1 })
  t.ok(wide.ok)
  if (wide.ok) {
    t.equal(wide.value.src, ADDR_UNREPRESENTABLE)
    t.equal(wide.value.dst, ADDR_UNREPRESENTABLE)
    t.equal(descriptorToJson(wide.value).src, '0xffffffffffff0000')
    const b = Buffer.alloc(DESC_SIZE)
    writeDescriptor(b, 0, wide.value)
    t.equal(b.readBigUInt64LE(DESC.SRC), 0xffffffffffff0000n)
  }

  for (const [obj, why] of [
    [null, 'not an object'],
    [[], 'an array'],
    [{ opcode: 'FROB' }, 'unknown opcode name'],
    [{ opcode: 256 }, 'opcode out of range'],
    [{ opcode: 'NOOP', bogus: 1 }, 'unknown field'],
    [{ opcode: 'NOOP', src: '7f00' }, 'address without 0x'],
    [{ opcode: 'NOOP', src: '0x10000000000000000' }, 'address over 64 bits'],
    [{ opcode: 'NOOP', src: -1 }, 'negative address'],
    [{ opcode: 'NOOP', src: 2 ** 60 }, 'address as an unsafe number'],
    [{ opcode: 'NOOP', tag: 'x' }, 'bad tag'],
    [{ opcode: 'NOOP', size: 1.5 }, 'fractional size'],
    [{ opcode: 'NOOP', size: 2 ** 32 }, 'size over 32 bits'],
    [{ opcode: 'NOOP', flags: ['LOUD'] }, 'unknown flag'],
    [{ opcode: 'NOOP', flags: 256 }, 'flags over a byte'],
    [{ opcode: 'NOOP', op_args: 'abc' }, 'short op_args'],
    [{ opcode: 'NOOP', pasid: -1 }, 'negative pasid']
  ] as Array<[unknown, string]>) {
    const r = descriptorFromJson(obj)
    t.notOk(r.ok, why)
    if (!r.ok) t.equal(r.errno, 'EINVAL')
  }

  const cj = completionToJson(makeCompletion({
    status: Status.PAGE_FAULT, faultInfo: 1, bytesCompleted: 4096, faultAddr: 0x7f0000002000, tag: 5n, value: 0
  }))
  t.same(cj, { status: 'PAGE_FAULT', result: 0, fault_info: 1, bytes_completed: 4096, fault_addr: '0x7f0000002000', tag: '0x5', value: 0 })
  const cb = completionFromJson(cj)
  t.ok(cb.ok && cb.value.faultAddr === 0x7f0000002000 && cb.value.status === Status.PAGE_FAULT && cb.value.tag === 5n)
  const cn = completionFromJson({ status: 1, fault_addr: '0xffffffffffffffff' })
  t.ok(cn.ok && cn.value.faultAddr === 0xffffffffffffffffn)
  t.notOk(completionFromJson({ status: 'MAYBE' }).ok)
  t.notOk(completionFromJson({ status: 1, result: 256 }).ok)
  t.notOk(completionFromJson('x').ok)
})
