/**
 * Queues, bindings and the mediated submit (PROTOCOL.md section 6). Descriptors and
 * completions in JSON follow PROTOCOL.md: 64-bit addresses and tags as hex strings,
 * sizes as numbers, opcodes and statuses by name. The descriptor schema documents the
 * JSON form; the route reads it with descriptorFromJson (src/hw/descriptor.ts), the one
 * parser of that form, which keeps every 64-bit value exact.
 */
import { Type, type Static } from '@sinclair/typebox'
import { Flag, Opcode, Status } from '../hw/descriptor.ts'
import { Hex64, Pid } from './common.ts'
import { DeviceId, QueueStateName } from './devices.ts'

export const QueueId = Type.String({ pattern: '^q-[0-9]{1,15}$', description: 'queue id', examples: ['q-1'] })

export const QueueParams = Type.Object({ qid: QueueId })
export type QueueParams = Static<typeof QueueParams>

export const QueueKindName = Type.Unsafe<'dedicated' | 'shared' | 'sync_only'>({
  type: 'string',
  enum: ['dedicated', 'shared', 'sync_only'],
  description: 'dedicated: a hardware queue of its own (EBUSY when none is free); shared: one hardware queue for many PASIDs; sync_only: the kernel-mediated queue of a device without SVA'
})
export type QueueKindName = Static<typeof QueueKindName>

export const QueueCreateBody = Type.Object({
  pid: Pid,
  kind: Type.Optional({ ...QueueKindName, description: 'by default dedicated on an SVA device, sync_only on the others (their only kind)' })
}, { additionalProperties: false })
export type QueueCreateBody = Static<typeof QueueCreateBody>

export const QueueView = Type.Object({
  qid: QueueId,
  device: DeviceId,
  pid: Pid,
  kind: QueueKindName,
  flags: Type.Array(Type.Literal('sync_only'), { description: '["sync_only"] on a device without SVA: no doorbell, submit through the kernel' }),
  pasid: Type.Optional(Type.Integer({ minimum: 0, description: 'the process\'s PASID (SVA devices): the device stamps it into every descriptor' })),
  depth: Type.Integer({ minimum: 1, description: 'ring depth: the hardware queue\'s, or for sync_only the kernel queues\' together' }),
  hwQueue: Type.Optional(Type.Integer({ minimum: 0, description: 'the hardware queue\'s index on the device (dedicated and shared)' })),
  doorbell: Type.Optional(Type.String({ description: 'the WebSocket doorbell (SVA queues only), PROTOCOL.md section 5', examples: ['/v1/queues/q-1/doorbell'] })),
  submit: Type.String({ description: 'the mediated submit, PROTOCOL.md section 6', examples: ['/v1/queues/q-1/submit'] }),
  state: QueueStateName,
  inflight: Type.Integer({ minimum: 0, description: 'descriptors of mediated submissions in flight' }),
  createdAt: Type.String({ format: 'date-time' })
}, { description: 'a queue' })
export type QueueView = Static<typeof QueueView>

export const QueueList = Type.Object({ queues: Type.Array(QueueView) }, { description: 'the tenant\'s queues' })

export const QueueListQuery = Type.Object({
  pid: Type.Optional({ ...Pid, description: 'only this process\'s queues' }),
  device: Type.Optional({ ...DeviceId, description: 'only queues on this device' })
}, { additionalProperties: false })

export const BindingBody = Type.Object({ device: DeviceId }, { additionalProperties: false })

export const Binding = Type.Object({
  device: DeviceId,
  pasid: Type.Integer({ minimum: 0, description: 'the process\'s PASID: one per address space, the same on every device' })
}, { description: 'the process is bound to the device' })
export type Binding = Static<typeof Binding>

export const BindingList = Type.Object({ bindings: Type.Array(Binding) }, { description: 'the devices the process is bound to' })

export const BindingParams = Type.Object({ pid: Pid, dev: DeviceId })
export type BindingParams = Static<typeof BindingParams>

const U64 = Type.Union([Hex64, Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })])
const U32 = Type.Integer({ minimum: 0, maximum: 0xFFFFFFFF })

export const DescriptorJson = Type.Object({
  opcode: Type.Union([
    Type.Unsafe<keyof typeof Opcode>({ type: 'string', enum: Object.keys(Opcode) }),
    Type.Integer({ minimum: 0, maximum: 255, description: 'an opcode the device does not know completes INVALID_OPCODE' })
  ]),
  flags: Type.Optional(Type.Union([
    Type.Integer({ minimum: 0, maximum: 255 }),
    Type.Array(Type.Unsafe<keyof typeof Flag>({ type: 'string', enum: Object.keys(Flag) }))
  ], { description: 'the flag byte, or flag names' })),
  pasid: Type.Optional({ ...U32, description: 'ignored: the device stamps the queue\'s' }),
  completion_addr: Type.Optional({ ...U64, description: 'with COMPLETION_RECORD, where the record goes too; 32-byte aligned' }),
  src: Type.Optional(U64),
  dst: Type.Optional(U64),
  size: Type.Optional(U32),
  dst_size: Type.Optional(U32),
  tag: Type.Optional({ ...U64, description: 'yours, echoed in the completion' }),
  op_args: Type.Optional(Type.String({ pattern: '^(0x)?[0-9a-fA-F]{32}$', description: 'the 16 op_args bytes in memory order' })),
  pattern: Type.Optional({ ...U64, description: 'FILL' }),
  seed: Type.Optional({ ...U32, description: 'CRC32' }),
  level: Type.Optional(Type.Integer({ minimum: 0, maximum: 9, description: 'DEFLATE' })),
  key_addr: Type.Optional({ ...U64, description: 'ENCRYPT, DECRYPT: a 32-byte key' }),
  iv_addr: Type.Optional({ ...U64, description: 'ENCRYPT, DECRYPT: a 12-byte IV' })
}, { additionalProperties: false, description: 'a descriptor, PROTOCOL.md section 1' })

export const MAX_SUBMIT_DESCRIPTORS = 4096

export const SubmitJsonBody = Type.Array(DescriptorJson, {
  minItems: 1,
  description: `1 to ${MAX_SUBMIT_DESCRIPTORS} descriptors (JSON); or, as application/octet-stream, N x 64 descriptor bytes`
})

export const CompletionJson = Type.Object({
  status: Type.Unsafe<keyof typeof Status>({ type: 'string', enum: Object.keys(Status) }),
  result: Type.Integer({ minimum: 0, maximum: 255 }),
  fault_info: Type.Integer({ minimum: 0, maximum: 255 }),
  bytes_completed: U32,
  fault_addr: Hex64,
  tag: Hex64,
  value: Type.Integer({ minimum: 0 })
}, { description: 'a completion record, PROTOCOL.md section 2' })

export const CompletionList = Type.Array(CompletionJson, { description: 'one completion per descriptor, in order' })
