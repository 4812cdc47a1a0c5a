/**
 * Devices as the API shows them: UACCE's attributes (api, flags, available_instances,
 * algorithms, isolate, isolate_strategy, the names sysfs uses) plus the configuration
 * and live counters of each hardware queue, the IOTLB and the engines. The admin side:
 * reset, fault injection, clearing isolation.
 */
import { Type, type Static } from '@sinclair/typebox'
import { DeviceConfigSchema } from '../hw/device-config.ts'
import { Opcode, type OpcodeName } from '../hw/descriptor.ts'

export const DeviceId = Type.String({ ...DeviceConfigSchema.properties.id, description: 'device id', examples: ['wd0'] })

export const DeviceParams = Type.Object({ dev: DeviceId })
export type DeviceParams = Static<typeof DeviceParams>

export const QueueStateName = Type.Unsafe<'running' | 'isolated' | 'resetting' | 'released'>({
  type: 'string',
  enum: ['running', 'isolated', 'resetting', 'released'],
  description: 'running; isolated (too many faults, until an admin clears it); resetting; released'
})
export type QueueStateName = Static<typeof QueueStateName>

const Count = Type.Integer({ minimum: 0 })

export const HwQueueCounters = Type.Object({
  submitted: { ...Count, description: 'descriptors accepted' },
  completed: { ...Count, description: 'descriptors completed' },
  retries: { ...Count, description: 'descriptors refused with RETRY (the ring was full)' },
  disabled: { ...Count, description: 'descriptors refused with QUEUE_DISABLED' },
  faults: { ...Count, description: 'faults counted against the queue, injected ones included' },
  aborted: { ...Count, description: 'descriptors completed ABORTED' },
  bytes: { ...Count, description: 'source bytes of descriptors completed SUCCESS' }
})

export const HwQueueView = Type.Object({
  index: { ...Count, description: 'the hardware queue\'s index on its device' },
  mode: Type.Unsafe<'dedicated' | 'shared' | 'kernel'>({ type: 'string', enum: ['dedicated', 'shared', 'kernel'], description: 'dedicated: one PASID; shared: many PASIDs; kernel: the mediated (sync_only) path' }),
  depth: Type.Integer({ minimum: 1 }),
  priority: Type.Integer({ minimum: 1, description: 'arbiter weight' }),
  allocated: Type.Boolean({ description: 'a dedicated or kernel queue handed to its owner' }),
  state: QueueStateName,
  stateReason: Type.Optional(Type.String({ description: 'why it left running' })),
  occupancy: { ...Count, description: 'descriptors accepted and not yet completed' },
  pending: { ...Count, description: 'accepted descriptors not yet started' },
  ports: { ...Count, description: 'submitters attached (one per PASID on a shared queue, one per sync_only queue on a kernel queue)' },
  counters: HwQueueCounters
})
export type HwQueueView = Static<typeof HwQueueView>

const EngineCounts = {
  submitted: Count,
  completed: Count,
  inflight: Count,
  batches: { ...Count, description: 'submissions published to the engine: one doorbell each' },
  wakes: { ...Count, description: 'publishes that found the engine asleep and woke it (a futex wake, the costly part of a publish)' },
  lostWakes: { ...Count, description: 'sleeps that ended by their 100 ms timeout with work already published: a wake-up that did not reach the engine (or a publish just as the sleep ended)' },
  lateDrains: { ...Count, description: 'times the 100 ms watch found completions published a period earlier and still undelivered, and delivered them: an announce that never reached the service\'s main thread (or a main thread busy that long)' },
  errors: { ...Count, description: 'jobs an engine failed on' }
}

export const EngineStats = Type.Object({
  ...EngineCounts,
  workers: Type.Array(Type.Object({
    ...EngineCounts,
    alive: Type.Boolean(),
    nice: Type.Union([Type.Integer({ minimum: -20, maximum: 19 }), Type.Null()], { description: 'the engine thread\'s nice value: engines lower their own priority below the service\'s main thread (README, "Engine priority"); null before it has started, or where the platform does not say' })
  }))
}, { description: 'the engines (worker threads): jobs over shared-memory rings' })

export const DeviceView = Type.Object({
  id: DeviceId,
  api: Type.String({ description: 'the device interface, PROTOCOL.md', examples: ['warpdrive-v1'] }),
  flags: Type.Integer({ minimum: 0, description: 'UACCE flags: bit 0 UACCE_DEV_SVA' }),
  sva: Type.Boolean({ description: 'shared virtual addressing: bindable (PASID), dedicated and shared queues, doorbells' }),
  available_instances: Type.Integer({ minimum: 0, description: 'free dedicated hardware queues; 0 means a dedicated queue answers EBUSY' }),
  algorithms: Type.Array(Type.Unsafe<OpcodeName>({ type: 'string', enum: Object.keys(Opcode) }), { description: 'the opcodes the device implements' }),
  isolate: Type.Integer({ minimum: 0, description: 'hardware queues isolated now' }),
  isolate_strategy: Type.Object({
    faults: Type.Integer({ minimum: 0 }),
    windowMs: Type.Integer({ minimum: 1 })
  }, { description: 'more than `faults` faults within `windowMs` isolate a queue' }),
  queueDepths: Type.Array(Type.Integer({ minimum: 1 })),
  maxTransferSize: Type.Integer({ minimum: 1, description: 'bytes a descriptor may read' }),
  maxBatchSize: Type.Integer({ minimum: 1, description: 'descriptors a BATCH may hold' }),
  engines: Type.Integer({ minimum: 1, description: 'engine threads' }),
  pollUs: Type.Integer({ minimum: 0, description: 'microseconds engine 0 keeps polling for work after its last job before it sleeps (0: never polls); while it polls it keeps a core busy' }),
  arbiterQuantum: Type.Integer({ minimum: 0, description: 'bytes of work the arbiter serves a queue (a shared queue, a PASID) for each unit of its priority (weight) in one visit, beyond that many descriptors; a descriptor counts its size, at least 512 bytes. 0: priority descriptors a visit' }),
  inlineBytes: Type.Integer({ minimum: 0, description: 'a NOOP, MEMMOVE or COMPARE of at most this many bytes runs on the service\'s main thread, not an engine (0: every job goes to an engine)' }),
  outstanding: { ...Count, description: 'descriptors accepted and not yet completed, over every queue' },
  inlineJobs: { ...Count, description: 'jobs run on the service\'s main thread rather than an engine (inlineBytes)' },
  queues: Type.Array(HwQueueView),
  iotlb: Type.Object({
    hits: Count,
    misses: Count,
    entries: { ...Count, description: 'translations cached now' },
    capacity: Type.Integer({ minimum: 1 })
  }),
  enginePool: EngineStats
}, { description: 'a device: its UACCE attributes and live counters' })
export type DeviceView = Static<typeof DeviceView>

export const DeviceList = Type.Object({ devices: Type.Array(DeviceView) }, { description: 'every device' })

export const AdminQueueParams = Type.Object({
  dev: DeviceId,
  index: Type.Integer({ minimum: 0, description: 'the hardware queue\'s index (GET /v1/devices/{dev} lists them)' })
})
export type AdminQueueParams = Static<typeof AdminQueueParams>

export const FaultInjectionBody = Type.Object({
  count: Type.Integer({ minimum: 1, maximum: 100000, description: 'faults to count against the queue, as if that many descriptors had faulted' })
}, { additionalProperties: false })

export const FaultsInjected = Type.Object({
  device: DeviceId,
  index: Count,
  state: QueueStateName,
  faults: { ...Count, description: 'the queue\'s fault counter afterwards' }
}, { description: 'the faults were counted' })

export const ResetDone = Type.Object({
  device: DeviceId,
  aborted: { ...Count, description: 'descriptors that were in flight and completed ABORTED' }
}, { description: 'the device was reset; its queues run again' })
