import { Type, type Static } from '@sinclair/typebox'
import { Pid } from './common.ts'
import { TenantId } from './tenants.ts'

export const ProcessView = Type.Object({
  pid: Pid,
  ppid: Type.Optional({ ...Pid, description: 'the parent, for a fork child' }),
  tenant: TenantId,
  state: Type.Literal('running'),
  pasid: Type.Optional(Type.Integer({ minimum: 0, description: 'bound PASID, once bound to an SVA device' })),
  createdAt: Type.String({ format: 'date-time' }),
  mappings: Type.Integer({ minimum: 0, description: 'number of mappings (vmas)' }),
  totalVm: Type.Integer({ minimum: 0, description: 'mapped bytes (what the memory quota counts)' }),
  residentPages: Type.Integer({ minimum: 0, description: 'pages present in the page table' }),
  faultsTotal: Type.Integer({ minimum: 0, description: 'IOMMU faults reported for this process' })
}, { description: 'a process' })
export type ProcessView = Static<typeof ProcessView>

export const ProcessList = Type.Object({ processes: Type.Array(ProcessView) }, { description: 'the tenant\'s running processes' })
