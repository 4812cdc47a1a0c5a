/**
 * Tenants as the admin API shows them. The registry persists the same shape plus the
 * token's hash (src/tenants.ts), so the file and the API cannot drift apart.
 */
import { Type, type Static } from '@sinclair/typebox'

export const DEFAULT_QUOTAS = {
  memoryBytes: 1024 * 2 ** 20,
  processes: 64,
  queues: 16,
  inflight: 1024
} as const

export const DEFAULT_WEIGHT = 100

export const TenantId = Type.String({ pattern: '^t_[0-9a-f]{16}$', description: 'tenant id', examples: ['t_5f0c1e2d3b4a6978'] })

export const TenantName = Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}$', description: 'unique name: lower case, digits, dot, dash, underscore' })

export const Quotas = Type.Object({
  memoryBytes: Type.Integer({ minimum: 0, description: 'virtual memory over all the tenant\'s processes, bytes' }),
  processes: Type.Integer({ minimum: 0, description: 'processes alive at once' }),
  queues: Type.Integer({ minimum: 0, description: 'device queues open at once' }),
  inflight: Type.Integer({ minimum: 0, description: 'descriptors in flight at once' })
}, { additionalProperties: false })
export type Quotas = Static<typeof Quotas>

export const Weight = Type.Integer({ minimum: 1, maximum: 1000, description: 'share of the devices under contention' })

export const TenantCreateBody = Type.Object({
  name: TenantName,
  quotas: Type.Optional(Type.Object({
    memoryBytes: Type.Optional({ ...Quotas.properties.memoryBytes, default: DEFAULT_QUOTAS.memoryBytes }),
    processes: Type.Optional({ ...Quotas.properties.processes, default: DEFAULT_QUOTAS.processes }),
    queues: Type.Optional({ ...Quotas.properties.queues, default: DEFAULT_QUOTAS.queues }),
    inflight: Type.Optional({ ...Quotas.properties.inflight, default: DEFAULT_QUOTAS.inflight })
  }, { additionalProperties: false })),
  weight: Type.Optional({ ...Weight, default: DEFAULT_WEIGHT })
}, { additionalProperties: false })
export type TenantCreateBody = Static<typeof TenantCreateBody>

export const TenantParams = Type.Object({ tenant: TenantId })
export type TenantParams = Static<typeof TenantParams>

export const TenantUsage = Type.Object({
  processes: Type.Integer({ minimum: 0 }),
  memoryBytes: Type.Integer({ minimum: 0 }),
  files: Type.Integer({ minimum: 0 })
})

export const Tenant = Type.Object({
  id: TenantId,
  name: TenantName,
  quotas: Quotas,
  weight: Weight,
  createdAt: Type.String({ format: 'date-time' })
})
export type Tenant = Static<typeof Tenant>

export const TenantView = Type.Composite([Tenant, Type.Object({ usage: TenantUsage })], { description: 'a tenant and what it uses' })
export type TenantView = Static<typeof TenantView>

export const TenantCreated = Type.Composite([Tenant, Type.Object({
  token: Type.String({ description: 'the tenant\'s bearer token; shown this once, only its hash is kept' })
})], { description: 'the tenant, with its token' })
export type TenantCreated = Static<typeof TenantCreated>

export const TenantList = Type.Object({ tenants: Type.Array(TenantView) }, { description: 'every tenant' })
