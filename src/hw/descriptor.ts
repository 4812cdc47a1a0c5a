/**
 * Descriptor (64 bytes) and completion record (32 bytes) codecs, opcodes and statuses,
 * following PROTOCOL.md sections 1-4 to the byte. Every offset is named once here; other
 * modules read fields through these names, never through literal numbers.
 *
 * 64-bit addresses are JS numbers. An address at or above 2**53 cannot be one (it would
 * silently lose its low bits), so it reads as ADDR_UNREPRESENTABLE (2**64: above every
 * 64-bit value, so any range or page-table check faults it, and its low bits read as 0),
 * and its exact value is kept as a bigint in `wide` so a fault can report it and a
 * re-encoded descriptor keeps it. Tags are opaque to the device and only echoed, so
 * they stay bigints end to end.
 */
import { Errno, err, ok, type Result } from './errno.ts'

export const DESC_SIZE = 64
export const DESC = {
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
} as const
export const OP_ARGS_SIZE = 16

/** Offsets inside op_args (descriptor offset minus 48), section 3. */
export const OP_ARG = {
  PATTERN: 0,
  SEED: 0,
  LEVEL: 0,
  KEY_ADDR: 0,
  IV_ADDR: 8
} as const
export const FILL_PATTERN_SIZE = 8
export const AES_KEY_SIZE = 32
export const AES_IV_SIZE = 12
export const AES_TAG_SIZE = 16
export const SHA256_SIZE = 32
export const MAX_DEFLATE_LEVEL = 9

export const CR_SIZE = 32
export const CR = {
  STATUS: 0,
  RESULT: 1,
  FAULT_INFO: 2,
  RESERVED: 3,
  BYTES_COMPLETED: 4,
  FAULT_ADDR: 8,
  TAG: 16,
  VALUE: 24
} as const
/** A completion record must sit on this boundary. */
export const CR_ALIGN = 32

export const Opcode = {
  NOOP: 0x00,
  MEMMOVE: 0x01,
  FILL: 0x02,
  COMPARE: 0x03,
  CRC32: 0x04,
  SHA256: 0x05,
  DEFLATE: 0x06,
  INFLATE: 0x07,
  ENCRYPT: 0x08,
  DECRYPT: 0x09,
  BATCH: 0x10,
  DRAIN: 0x11
} as const
export type Opcode = typeof Opcode[keyof typeof Opcode]
export type OpcodeName = keyof typeof Opcode

/** Status 0 is not a status: it is how a tenant sees "not complete yet". */
export const STATUS_NOT_COMPLETE = 0
export const Status = {
  SUCCESS: 0x01,
  PAGE_FAULT: 0x02,
  INVALID_OPCODE: 0x03,
  INVALID_FIELD: 0x04,
  OUTPUT_OVERFLOW: 0x05,
  DATA_ERROR: 0x06,
  RETRY: 0x07,
  QUEUE_DISABLED: 0x08,
  ABORTED: 0x09,
  BATCH_FAILED: 0x0A
} as const
export type Status = typeof Status[keyof typeof Status]
export type StatusName = keyof typeof Status

export const Flag = {
  COMPLETION_RECORD: 1 << 0,
  NOTIFY: 1 << 1,
  BLOCK_ON_FAULT: 1 << 2,
  FENCE: 1 << 3
} as const
export type FlagName = keyof typeof Flag
export const FLAG_RESERVED_MASK = 0xF0

export const FaultInfo = {
  WRITE: 1 << 0,
  NO_MAPPING: 1 << 1
} as const

/** Above every 64-bit value; see the module comment. */
export const ADDR_UNREPRESENTABLE = 2 ** 64
const TWO_32 = 2 ** 32
const MAX_U64 = (1n << 64n) - 1n

const opcodeNames = new Map<number, OpcodeName>(
  Object.entries(Opcode).map(([k, v]) => [v, k as OpcodeName]))
const statusNames = new Map<number, StatusName>(
  Object.entries(Status).map(([k, v]) => [v, k as StatusName]))

export function opcodeName (code: number): OpcodeName | undefined {
  return opcodeNames.get(code)
}
export function statusName (code: number): StatusName | undefined {
  return statusNames.get(code)
}
/** 1 at each opcode's value: a table read instead of a hash lookup per descriptor */
const OPCODE_VALID = new Uint8Array(256)
for (const v of Object.values(Opcode)) OPCODE_VALID[v] = 1
export function isOpcode (code: number): code is Opcode {
  return OPCODE_VALID[code & 0xFF] === 1 && code === (code & 0xFF)
}

/** Exact values of the addresses that read as ADDR_UNREPRESENTABLE. */
export interface WideAddrs {
  completionAddr?: bigint
  src?: bigint
  dst?: bigint
}

export interface Descriptor {
  opcode: number
  flags: number
  /** bytes 2-3 as a little-endian u16; must be 0 */
  reserved: number
  pasid: number
  completionAddr: number
  src: number
  dst: number
  size: number
  dstSize: number
  tag: bigint
  /** a private copy of bytes 48-63, never a view of tenant memory */
  opArgs: Uint8Array
  wide?: WideAddrs
}

export interface Completion {
  status: number
  result: number
  faultInfo: number
  bytesCompleted: number
  /** a bigint only for an address that does not fit a safe integer */
  faultAddr: number | bigint
  tag: bigint
  value: number
}

export interface Limits {
  maxTransferSize: number
  maxBatchSize: number
  /**
   * The opcodes the device implements, BATCH and DRAIN included when it does: 1 at each
   * one's value (algorithmTable). A table, not a Set: it is read for every descriptor.
   */
  algorithms: Uint8Array
}

/** The Limits.algorithms table of a set of opcodes. */
export function algorithmTable (opcodes: Iterable<number>): Uint8Array {
  const t = new Uint8Array(256)
  for (const op of opcodes) if (isOpcode(op)) t[op] = 1
  return t
}

// Bytes are assembled by hand rather than through a DataView so the same code reads a
// Buffer, a plain Uint8Array or a view of the shared physical memory without allocating.

export function readU32 (b: Uint8Array, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0
}

export function writeU32 (b: Uint8Array, o: number, v: number): void {
  b[o] = v
  b[o + 1] = v >>> 8
  b[o + 2] = v >>> 16
  b[o + 3] = v >>> 24
}

export function readU64 (b: Uint8Array, o: number): bigint {
  return (BigInt(readU32(b, o + 4)) << 32n) | BigInt(readU32(b, o))
}

/** A 64-bit address as a number, ADDR_UNREPRESENTABLE when it is 2**53 or more. */
export function readAddr (b: Uint8Array, o: number): number {
  const hi = readU32(b, o + 4)
  if (hi >= 0x200000) return ADDR_UNREPRESENTABLE
  return hi * TWO_32 + readU32(b, o)
}

/**
 * A fault address for the completion record: `va` itself, or, when it is 2**53 or more
 * (an address field no number holds, read as ADDR_UNREPRESENTABLE: no process maps it, so
 * it faults at its first byte), the exact 64 bits the tenant wrote at `field`.
 */
export function exactFaultAddr (d: Uint8Array, field: number, va: number): number | bigint {
  return Number.isSafeInteger(va) ? va : readU64(d, field)
}

/**
 * Where the descriptor's completion record goes, 0 for nowhere: when it asks for none,
 * and when its completion_addr is misaligned. That descriptor completes INVALID_FIELD,
 * and a record written there anyway could run past its page into the next frame.
 */
export function recordAddr (d: Uint8Array): number {
  if ((d[DESC.FLAGS] & Flag.COMPLETION_RECORD) === 0 || d[DESC.COMPLETION_ADDR] % CR_ALIGN !== 0) return 0
  return readAddr(d, DESC.COMPLETION_ADDR)
}

/**
 * Writes a 64-bit value. A number must be a non-negative safe integer; anything else
 * (ADDR_UNREPRESENTABLE without its exact value, a negative, a fraction) is a bug in the
 * caller and throws rather than writing a wrong address.
 */
export function writeU64 (b: Uint8Array, o: number, v: number | bigint): void {
  if (typeof v === 'bigint') {
    if (v < 0n || v > MAX_U64) throw new RangeError(`not a u64: ${v}`)
    writeU32(b, o, Number(v & 0xFFFFFFFFn))
    writeU32(b, o + 4, Number(v >> 32n))
    return
  }
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`not a u64 address: ${v}`)
  writeU32(b, o, v >>> 0)
  writeU32(b, o + 4, Math.floor(v / TWO_32))
}

function readAddrField (b: Uint8Array, o: number, d: Descriptor, key: keyof WideAddrs): number {
  const a = readAddr(b, o)
  if (a === ADDR_UNREPRESENTABLE) (d.wide ??= {})[key] = readU64(b, o)
  return a
}

/** Snapshots a descriptor (the tenant may rewrite the bytes after this). */
export function readDescriptor (b: Uint8Array, off = 0): Descriptor {
  const opArgs = new Uint8Array(OP_ARGS_SIZE)
  opArgs.set(b.subarray(off + DESC.OP_ARGS, off + DESC.OP_ARGS + OP_ARGS_SIZE))
  const d: Descriptor = {
    opcode: b[off + DESC.OPCODE],
    flags: b[off + DESC.FLAGS],
    reserved: b[off + DESC.RESERVED] | (b[off + DESC.RESERVED + 1] << 8),
    pasid: readU32(b, off + DESC.PASID),
    completionAddr: 0,
    src: 0,
    dst: 0,
    size: readU32(b, off + DESC.SIZE),
    dstSize: readU32(b, off + DESC.DST_SIZE),
    tag: readU64(b, off + DESC.TAG),
    opArgs
  }
  d.completionAddr = readAddrField(b, off + DESC.COMPLETION_ADDR, d, 'completionAddr')
  d.src = readAddrField(b, off + DESC.SRC, d, 'src')
  d.dst = readAddrField(b, off + DESC.DST, d, 'dst')
  return d
}

/** The exact 64-bit value of an address field, wide or not. */
export function exactAddr (d: Descriptor, key: keyof WideAddrs): bigint {
  const v = d[key]
  if (v === ADDR_UNREPRESENTABLE) {
    const w = d.wide?.[key]
    if (w === undefined) throw new RangeError(`${key} is unrepresentable and its exact value is lost`)
    return w
  }
  return BigInt(v)
}

function addrOut (d: Descriptor, key: keyof WideAddrs): number | bigint {
  return d[key] === ADDR_UNREPRESENTABLE ? exactAddr(d, key) : d[key]
}

export function writeDescriptor (b: Uint8Array, off: number, d: Descriptor): void {
  b[off + DESC.OPCODE] = d.opcode
  b[off + DESC.FLAGS] = d.flags
  b[off + DESC.RESERVED] = d.reserved
  b[off + DESC.RESERVED + 1] = d.reserved >>> 8
  writeU32(b, off + DESC.PASID, d.pasid)
  writeU64(b, off + DESC.COMPLETION_ADDR, addrOut(d, 'completionAddr'))
  writeU64(b, off + DESC.SRC, addrOut(d, 'src'))
  writeU64(b, off + DESC.DST, addrOut(d, 'dst'))
  writeU32(b, off + DESC.SIZE, d.size)
  writeU32(b, off + DESC.DST_SIZE, d.dstSize)
  writeU64(b, off + DESC.TAG, d.tag)
  if (d.opArgs.length !== OP_ARGS_SIZE) throw new RangeError(`op_args must be ${OP_ARGS_SIZE} bytes`)
  b.set(d.opArgs, off + DESC.OP_ARGS)
}

/** A descriptor with every field 0 except those given. */
export function makeDescriptor (init: Partial<Descriptor> & { opcode: number }): Descriptor {
  return {
    flags: 0,
    reserved: 0,
    pasid: 0,
    completionAddr: 0,
    src: 0,
    dst: 0,
    size: 0,
    dstSize: 0,
    tag: 0n,
    ...init,
    opArgs: init.opArgs ?? new Uint8Array(OP_ARGS_SIZE)
  }
}

export function readCompletion (b: Uint8Array, off = 0): Completion {
  const fa = readAddr(b, off + CR.FAULT_ADDR)
  return {
    status: b[off + CR.STATUS],
    result: b[off + CR.RESULT],
    faultInfo: b[off + CR.FAULT_INFO],
    bytesCompleted: readU32(b, off + CR.BYTES_COMPLETED),
    faultAddr: fa === ADDR_UNREPRESENTABLE ? readU64(b, off + CR.FAULT_ADDR) : fa,
    tag: readU64(b, off + CR.TAG),
    value: Number(readU64(b, off + CR.VALUE))
  }
}

/**
 * Writes the body, then the status byte: a tenant polling the status in memory must
 * never see a non-zero status next to a stale body (section 2). The status byte is
 * cleared first so a record being rewritten in place is "not complete" while it changes.
 */
export function writeCompletion (b: Uint8Array, off: number, c: Completion): void {
  b[off + CR.STATUS] = STATUS_NOT_COMPLETE
  b[off + CR.RESULT] = c.result
  b[off + CR.FAULT_INFO] = c.faultInfo
  b[off + CR.RESERVED] = 0
  writeU32(b, off + CR.BYTES_COMPLETED, c.bytesCompleted)
  writeU64(b, off + CR.FAULT_ADDR, c.faultAddr)
  writeU64(b, off + CR.TAG, c.tag)
  writeU64(b, off + CR.VALUE, c.value)
  b[off + CR.STATUS] = c.status
}

/** A completion with every field 0 except those given. */
export function makeCompletion (init: Partial<Completion> & { status: number }): Completion {
  return { result: 0, faultInfo: 0, bytesCompleted: 0, faultAddr: 0, tag: 0n, value: 0, ...init }
}

// op_args accessors (section 3)

export function fillPattern (opArgs: Uint8Array): Uint8Array {
  return opArgs.subarray(OP_ARG.PATTERN, OP_ARG.PATTERN + FILL_PATTERN_SIZE)
}
export function crcSeed (opArgs: Uint8Array): number {
  return readU32(opArgs, OP_ARG.SEED)
}
export function deflateLevel (opArgs: Uint8Array): number {
  return opArgs[OP_ARG.LEVEL]
}
/** The key address of ENCRYPT/DECRYPT, ADDR_UNREPRESENTABLE when 2**53 or more. */
export function keyAddr (opArgs: Uint8Array): number {
  return readAddr(opArgs, OP_ARG.KEY_ADDR)
}
export function ivAddr (opArgs: Uint8Array): number {
  return readAddr(opArgs, OP_ARG.IV_ADDR)
}

/** How many leading op_args bytes each opcode uses, by opcode value; the rest must be 0. */
const USED_OP_ARGS = new Uint8Array(256)
USED_OP_ARGS[Opcode.FILL] = FILL_PATTERN_SIZE
USED_OP_ARGS[Opcode.CRC32] = 4
USED_OP_ARGS[Opcode.DEFLATE] = 1
USED_OP_ARGS[Opcode.ENCRYPT] = 16
USED_OP_ARGS[Opcode.DECRYPT] = 16

/** Output bound of raw deflate for n input bytes (zlib's deflateBound, stored-block worst case). */
export function deflateBound (n: number): number {
  return n + Math.ceil(n / 16383) * 5 + 64
}

/** One buffer a descriptor names: where its address is, and how it is accessed. */
export interface BufferRegion {
  role: 'key' | 'iv' | 'src' | 'dst'
  /** descriptor offset of the address field */
  field: number
  va: number
  len: number
  write: boolean
}

/** A region's role as a number, in the order a device reads them; also an index. */
export const Role = { KEY: 0, IV: 1, SRC: 2, DST: 3 } as const
const ROLE_NAMES = ['key', 'iv', 'src', 'dst'] as const

/**
 * The regions of one descriptor, in columns, refilled for each: the device's front end
 * reads every descriptor's regions, and an object per region was garbage per descriptor.
 */
export class RegionList {
  n = 0
  readonly role = new Uint8Array(4)
  readonly field = new Uint8Array(4)
  readonly va = new Float64Array(4)
  readonly len = new Float64Array(4)
  readonly write = new Uint8Array(4)

  push (role: number, field: number, va: number, len: number, write: boolean): void {
    const i = this.n++
    this.role[i] = role
    this.field[i] = field
    this.va[i] = va
    this.len[i] = len
    this.write[i] = write ? 1 : 0
  }
}

/**
 * The buffers a descriptor names (section 3), in the order a device reads them: the
 * key and IV, the source, then the destination (COMPARE's second source is read). The
 * destination is what the output can reach, never more than `maxTransferSize` for an
 * INFLATE, whatever `dst_size` says. NOOP, DRAIN and BATCH have none here (a BATCH's
 * array is read by whoever runs the batch). Answers `out`, refilled.
 */
export function regionsInto (b: Uint8Array, maxTransferSize: number, out: RegionList): RegionList {
  const opcode = b[DESC.OPCODE]
  const size = readU32(b, DESC.SIZE)
  const dstSize = readU32(b, DESC.DST_SIZE)
  out.n = 0
  if (opcode === Opcode.ENCRYPT || opcode === Opcode.DECRYPT) {
    out.push(Role.KEY, DESC.OP_ARGS + OP_ARG.KEY_ADDR, readAddr(b, DESC.OP_ARGS + OP_ARG.KEY_ADDR), AES_KEY_SIZE, false)
    out.push(Role.IV, DESC.OP_ARGS + OP_ARG.IV_ADDR, readAddr(b, DESC.OP_ARGS + OP_ARG.IV_ADDR), AES_IV_SIZE, false)
  }
  if (opcode >= Opcode.MEMMOVE && opcode <= Opcode.DECRYPT && opcode !== Opcode.FILL) {
    out.push(Role.SRC, DESC.SRC, readAddr(b, DESC.SRC), size, false)
  }
  let len = 0
  let write = true
  switch (opcode) {
    case Opcode.MEMMOVE: case Opcode.FILL: len = size; break
    case Opcode.COMPARE: len = size; write = false; break
    case Opcode.SHA256: len = SHA256_SIZE; break
    case Opcode.DEFLATE: len = Math.min(dstSize, deflateBound(size)); break
    case Opcode.INFLATE: len = Math.min(dstSize, maxTransferSize); break
    case Opcode.ENCRYPT: len = Math.min(dstSize, size + AES_TAG_SIZE); break
    case Opcode.DECRYPT: len = Math.min(dstSize, Math.max(0, size - AES_TAG_SIZE)); break
  }
  if (len > 0) out.push(Role.DST, DESC.DST, readAddr(b, DESC.DST), len, write)
  return out
}

/** regionsInto as objects, for callers off the per-descriptor path. */
export function descriptorRegions (b: Uint8Array, maxTransferSize: number): BufferRegion[] {
  const l = regionsInto(b, maxTransferSize, new RegionList())
  const out: BufferRegion[] = []
  for (let i = 0; i < l.n; i++) {
    out.push({ role: ROLE_NAMES[l.role[i]], field: l.field[i], va: l.va[i], len: l.len[i], write: l.write[i] === 1 })
  }
  return out
}

/**
 * 0 when the descriptor may run, else the status it completes with (section 4). It
 * checks the descriptor alone; addresses are for translation to judge. NOOP and DRAIN
 * read nothing, so their size is not checked; completion_addr 0 with COMPLETION_RECORD
 * set means no record (section 1: "0 = none"), not an error. `inBatch`: the descriptor
 * is a member of a BATCH, where a nested BATCH is INVALID_OPCODE.
 *
 * It reads the bytes where they lie, with no object and no op_args view per call: the
 * device's front end and the kernel's mediated path check every descriptor this way.
 */
export function validateInPlace (b: Uint8Array, limits: Limits, inBatch = false): number {
  const op = b[DESC.OPCODE]
  if (limits.algorithms[op] !== 1) return Status.INVALID_OPCODE
  if (op === Opcode.BATCH && inBatch) return Status.INVALID_OPCODE
  if ((b[DESC.FLAGS] & FLAG_RESERVED_MASK) !== 0) return Status.INVALID_FIELD
  if ((b[DESC.RESERVED] | b[DESC.RESERVED + 1]) !== 0) return Status.INVALID_FIELD
  // 2**32 is a multiple of CR_ALIGN: the low byte decides, wide address or not
  if (b[DESC.COMPLETION_ADDR] % CR_ALIGN !== 0) return Status.INVALID_FIELD
  const size = readU32(b, DESC.SIZE)
  if (op === Opcode.BATCH) {
    if (size < 1 || size > limits.maxBatchSize) return Status.INVALID_FIELD
  } else if (op !== Opcode.NOOP && op !== Opcode.DRAIN) {
    if (size < 1 || size > limits.maxTransferSize) return Status.INVALID_FIELD
  }
  let unused = 0
  for (let i = DESC.OP_ARGS + USED_OP_ARGS[op]; i < DESC_SIZE; i++) unused |= b[i]
  if (unused !== 0) return Status.INVALID_FIELD
  if (op === Opcode.DEFLATE && b[DESC.OP_ARGS + OP_ARG.LEVEL] > MAX_DEFLATE_LEVEL) return Status.INVALID_FIELD
  if (op === Opcode.DECRYPT && size < AES_TAG_SIZE) return Status.INVALID_FIELD
  return 0
}

// JSON forms (PROTOCOL.md: 64-bit addresses and tags as hex strings, sizes as numbers).
// Field names are the protocol's. op_args appear by meaning for the opcode (pattern,
// seed, level, key_addr, iv_addr); raw `op_args` (32 hex digits, bytes in memory order)
// is accepted as a base and emitted only when bytes the opcode does not use are set.

export interface DescriptorJson {
  opcode: OpcodeName | number
  flags?: number | FlagName[]
  pasid?: number
  completion_addr?: string | number
  src?: string | number
  dst?: string | number
  size?: number
  dst_size?: number
  tag?: string | number
  op_args?: string
  pattern?: string
  seed?: number
  level?: number
  key_addr?: string | number
  iv_addr?: string | number
}

export interface CompletionJson {
  status: StatusName | number
  result: number
  fault_info: number
  bytes_completed: number
  fault_addr: string
  tag: string
  value: number
}

const DESC_JSON_KEYS = new Set(['opcode', 'flags', 'pasid', 'completion_addr', 'src', 'dst', 'size',
  'dst_size', 'tag', 'op_args', 'pattern', 'seed', 'level', 'key_addr', 'iv_addr'])

export function hex64 (v: number | bigint): string {
  return '0x' + BigInt(v).toString(16)
}

function parseU64 (v: unknown, name: string): Result<bigint> {
  if (typeof v === 'number') {
    if (Number.isSafeInteger(v) && v >= 0) return ok(BigInt(v))
  } else if (typeof v === 'string' && /^0x[0-9a-fA-F]{1,16}$/.test(v)) {
    return ok(BigInt(v))
  }
  return err(Errno.EINVAL, `${name}: expected a hex string "0x..." of at most 64 bits or a non-negative safe integer`)
}

function parseUint (v: unknown, name: string, max: number): Result<number> {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max) return ok(v)
  return err(Errno.EINVAL, `${name}: expected an integer 0..${max}`)
}

function u64ToAddr (v: bigint, d: Descriptor, key: keyof WideAddrs): number {
  if (v < (1n << 53n)) return Number(v)
  ;(d.wide ??= {})[key] = v
  return ADDR_UNREPRESENTABLE
}

function parseOpcode (v: unknown): Result<number> {
  if (typeof v === 'string') {
    const code = (Opcode as Record<string, number>)[v]
    if (Object.hasOwn(Opcode, v)) return ok(code)
    return err(Errno.EINVAL, `opcode: unknown name ${JSON.stringify(v)}`)
  }
  // an unknown number is kept: the device answers it with INVALID_OPCODE
  return parseUint(v, 'opcode', 0xFF)
}

function parseFlags (v: unknown): Result<number> {
  if (Array.isArray(v)) {
    let f = 0
    for (const name of v) {
      if (typeof name !== 'string' || !Object.hasOwn(Flag, name)) {
        return err(Errno.EINVAL, `flags: unknown flag ${JSON.stringify(name)}`)
      }
      f |= Flag[name as FlagName]
    }
    return ok(f)
  }
  return parseUint(v, 'flags', 0xFF)
}

/** Parses the JSON form; EINVAL names the offending field. */
export function descriptorFromJson (obj: unknown): Result<Descriptor> {
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
    return err(Errno.EINVAL, 'a descriptor must be a JSON object')
  }
  const j = obj as Record<string, unknown>
  for (const k of Object.keys(j)) {
    if (!DESC_JSON_KEYS.has(k)) return err(Errno.EINVAL, `unknown descriptor field ${JSON.stringify(k)}`)
  }
  const opcode = parseOpcode(j.opcode)
  if (!opcode.ok) return opcode
  const d = makeDescriptor({ opcode: opcode.value })
  if (j.flags !== undefined) {
    const r = parseFlags(j.flags)
    if (!r.ok) return r
    d.flags = r.value
  }
  if (j.pasid !== undefined) {
    const r = parseUint(j.pasid, 'pasid', 0xFFFFFFFF)
    if (!r.ok) return r
    d.pasid = r.value
  }
  for (const [name, key] of [['completion_addr', 'completionAddr'], ['src', 'src'], ['dst', 'dst']] as const) {
    if (j[name] === undefined) continue
    const r = parseU64(j[name], name)
    if (!r.ok) return r
    d[key] = u64ToAddr(r.value, d, key)
  }
  for (const [name, key] of [['size', 'size'], ['dst_size', 'dstSize']] as const) {
    if (j[name] === undefined) continue
    const r = parseUint(j[name], name, 0xFFFFFFFF)
    if (!r.ok) return r
    d[key] = r.value
  }
  if (j.tag !== undefined) {
    const r = parseU64(j.tag, 'tag')
    if (!r.ok) return r
    d.tag = r.value
  }
  if (j.op_args !== undefined) {
    if (typeof j.op_args !== 'string' || !/^(0x)?[0-9a-fA-F]{32}$/.test(j.op_args)) {
      return err(Errno.EINVAL, 'op_args: expected 32 hex digits (16 bytes in memory order)')
    }
    d.opArgs.set(Buffer.from(j.op_args.replace(/^0x/, ''), 'hex'))
  }
  const a = d.opArgs
  if (j.pattern !== undefined) {
    const r = parseU64(j.pattern, 'pattern')
    if (!r.ok) return r
    writeU64(a, OP_ARG.PATTERN, r.value)
  }
  if (j.seed !== undefined) {
    const r = parseUint(j.seed, 'seed', 0xFFFFFFFF)
    if (!r.ok) return r
    writeU32(a, OP_ARG.SEED, r.value)
  }
  if (j.level !== undefined) {
    const r = parseUint(j.level, 'level', 0xFF)
    if (!r.ok) return r
    a[OP_ARG.LEVEL] = r.value
  }
  for (const [name, off] of [['key_addr', OP_ARG.KEY_ADDR], ['iv_addr', OP_ARG.IV_ADDR]] as const) {
    if (j[name] === undefined) continue
    const r = parseU64(j[name], name)
    if (!r.ok) return r
    writeU64(a, off, r.value)
  }
  return ok(d)
}

export function descriptorToJson (d: Descriptor): DescriptorJson {
  const j: DescriptorJson = {
    opcode: opcodeName(d.opcode) ?? d.opcode,
    flags: d.flags,
    pasid: d.pasid,
    completion_addr: hex64(addrOut(d, 'completionAddr')),
    src: hex64(addrOut(d, 'src')),
    dst: hex64(addrOut(d, 'dst')),
    size: d.size,
    dst_size: d.dstSize,
    tag: hex64(d.tag)
  }
  const a = d.opArgs
  const used = USED_OP_ARGS[d.opcode & 0xFF]
  if (a.subarray(used).some(x => x !== 0)) {
    j.op_args = Buffer.from(a).toString('hex')
    return j
  }
  switch (d.opcode) {
    case Opcode.FILL: j.pattern = hex64(readU64(a, OP_ARG.PATTERN)); break
    case Opcode.CRC32: j.seed = crcSeed(a); break
    case Opcode.DEFLATE: j.level = deflateLevel(a); break
    case Opcode.ENCRYPT:
    case Opcode.DECRYPT:
      j.key_addr = hex64(readU64(a, OP_ARG.KEY_ADDR))
      j.iv_addr = hex64(readU64(a, OP_ARG.IV_ADDR))
      break
  }
  return j
}

export function completionToJson (c: Completion): CompletionJson {
  return {
    status: statusName(c.status) ?? c.status,
    result: c.result,
    fault_info: c.faultInfo,
    bytes_completed: c.bytesCompleted,
    fault_addr: hex64(c.faultAddr),
    tag: hex64(c.tag),
    value: c.value
  }
}

export function completionFromJson (obj: unknown): Result<Completion> {
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
    return err(Errno.EINVAL, 'a completion must be a JSON object')
  }
  const j = obj as Record<string, unknown>
  let status: number
  if (typeof j.status === 'string') {
    if (!Object.hasOwn(Status, j.status)) return err(Errno.EINVAL, `status: unknown name ${JSON.stringify(j.status)}`)
    status = Status[j.status as StatusName]
  } else {
    const r = parseUint(j.status, 'status', 0xFF)
    if (!r.ok) return r
    status = r.value
  }
  const c = makeCompletion({ status })
  for (const [name, key, max] of [['result', 'result', 0xFF], ['fault_info', 'faultInfo', 0xFF],
    ['bytes_completed', 'bytesCompleted', 0xFFFFFFFF], ['value', 'value', Number.MAX_SAFE_INTEGER]] as const) {
    if (j[name] === undefined) continue
    const r = parseUint(j[name], name, max)
    if (!r.ok) return r
    c[key] = r.value
  }
  if (j.fault_addr !== undefined) {
    const r = parseU64(j.fault_addr, 'fault_addr')
    if (!r.ok) return r
    c.faultAddr = r.value < (1n << 53n) ? Number(r.value) : r.value
  }
  if (j.tag !== undefined) {
    const r = parseU64(j.tag, 'tag')
    if (!r.ok) return r
    c.tag = r.value
  }
  return ok(c)
}
