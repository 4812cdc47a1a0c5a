/**
 * What a device is made of, from the configuration file or the built-in default: its
 * hardware queues (mode, depth, priority), engines, limits, opcodes, and the isolation
 * strategy (UACCE's isolate_strategy: more than `faults` in `windowMs` isolates a queue).
 */
import { Type, type Static } from '@sinclair/typebox'
import { Opcode, type OpcodeName } from './descriptor.ts'

export const QueueMode = {
  DEDICATED: 'dedicated',
  SHARED: 'shared',
  KERNEL: 'kernel'
} as const
export type QueueMode = typeof QueueMode[keyof typeof QueueMode]

const opcodeNames = Object.keys(Opcode) as OpcodeName[]

export const QueueConfigSchema = Type.Object({
  mode: Type.Union([Type.Literal('dedicated'), Type.Literal('shared'), Type.Literal('kernel')]),
  depth: Type.Integer({ minimum: 1, maximum: 65536, default: 128 }),
  priority: Type.Integer({ minimum: 1, maximum: 100, default: 1, description: 'arbiter weight' })
}, { additionalProperties: false })

export const DeviceConfigSchema = Type.Object({
  id: Type.String({ pattern: '^[a-z][a-z0-9-]{0,31}$' }),
  sva: Type.Boolean(),
  queues: Type.Array(QueueConfigSchema, { minItems: 1, maxItems: 256 }),
  engines: Type.Integer({ minimum: 1, maximum: 64, default: 1 }),
  maxTransferSize: Type.Integer({ minimum: 4096, maximum: 16 * 2 ** 20, default: 2 ** 20 }),
  maxBatchSize: Type.Integer({ minimum: 1, maximum: 4096, default: 256 }),
  algorithms: Type.Array(Type.Union(opcodeNames.map(n => Type.Literal(n))), { minItems: 1, uniqueItems: true }),
  isolateStrategy: Type.Object({
    faults: Type.Integer({ minimum: 0, default: 64 }),
    windowMs: Type.Integer({ minimum: 1, default: 60000 })
  }, { additionalProperties: false }),
  iotlbEntries: Type.Integer({ minimum: 1, maximum: 1 << 20, default: 4096 }),
  pollUs: Type.Integer({
    minimum: 0,
    maximum: 100000,
    default: 500,
    description: 'microseconds engine 0 keeps polling its ring after its last job before it sleeps; 0 sleeps at once'
  }),
  arbiterQuantum: Type.Integer({
    minimum: 0,
    maximum: 16 * 2 ** 20,
    default: 65536,
    description: 'bytes of work the arbiter serves a queue (and a shared queue a PASID) for each unit of its priority (weight) in one visit, beyond its priority\'s count of descriptors; a descriptor counts its size, at least 512 bytes (so 128 NOOPs a unit at the default). 0: priority descriptors a visit'
  }),
  inlineBytes: Type.Integer({
    minimum: 0,
    maximum: 65536,
    default: 4096,
    description: 'a NOOP, MEMMOVE or COMPARE of at most this many bytes runs on the service\'s main thread, not an engine: handing it to an engine costs the main thread more than doing it. 0: every job goes to an engine'
  })
}, { additionalProperties: false })
export type DeviceConfig = Static<typeof DeviceConfigSchema>

export const DevicesFileSchema = Type.Object({
  devices: Type.Array(DeviceConfigSchema, { minItems: 1, maxItems: 16 })
}, { additionalProperties: false })
export type DevicesFile = Static<typeof DevicesFileSchema>

/** One SVA device with 4 dedicated queues and 1 shared, one device without SVA with 2 kernel queues. */
export const DEFAULT_DEVICES: DeviceConfig[] = [
  {
    id: 'wd0',
    sva: true,
    queues: [
      { mode: 'dedicated', depth: 128, priority: 1 },
      { mode: 'dedicated', depth: 128, priority: 1 },
      { mode: 'dedicated', depth: 128, priority: 1 },
      { mode: 'dedicated', depth: 128, priority: 1 },
      { mode: 'shared', depth: 256, priority: 2 }
    ],
    engines: 2,
    maxTransferSize: 2 ** 20,
    maxBatchSize: 256,
    algorithms: opcodeNames,
    isolateStrategy: { faults: 64, windowMs: 60000 },
    iotlbEntries: 4096,
    pollUs: 500,
    arbiterQuantum: 65536,
    inlineBytes: 4096
  },
  {
    id: 'wd1',
    sva: false,
    queues: [
      { mode: 'kernel', depth: 256, priority: 1 },
      { mode: 'kernel', depth: 256, priority: 1 }
    ],
    engines: 1,
    maxTransferSize: 2 ** 20,
    maxBatchSize: 256,
    algorithms: opcodeNames,
    isolateStrategy: { faults: 64, windowMs: 60000 },
    iotlbEntries: 4096,
    pollUs: 500,
    arbiterQuantum: 65536,
    inlineBytes: 4096
  }
]
