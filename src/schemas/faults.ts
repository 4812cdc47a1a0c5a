import { Type } from '@sinclair/typebox'
import { Hex64 } from './common.ts'

export const Fault = Type.Object({
  pasid: Type.Integer({ minimum: 0 }),
  addr: { ...Hex64, description: 'the faulting address as the descriptor named it: any 64-bit value, not only a user address' },
  write: Type.Boolean(),
  reason: Type.Unsafe<'not_present' | 'permission' | 'no_mapping'>({ type: 'string', enum: ['not_present', 'permission', 'no_mapping'] }),
  served: Type.Optional(Type.Boolean({ description: 'what the page request answered, when one was made' })),
  device: Type.Optional(Type.String()),
  at: Type.String({ format: 'date-time' })
})

export const FaultList = Type.Object({
  total: Type.Integer({ minimum: 0, description: 'faults reported since the process started' }),
  faults: Type.Array(Fault, { description: 'the newest faults, oldest first (the kernel keeps 256)' })
}, { description: 'the process\'s IOMMU faults' })
