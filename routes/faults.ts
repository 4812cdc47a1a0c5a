/** The IOMMU faults of one process, as its fault queue keeps them. */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { hex } from '../src/errors.ts'
import { AUTH_ERRORS, PidParams, problems } from '../src/schemas/common.ts'
import { FaultList } from '../src/schemas/faults.ts'
import { tenantOf } from '../src/tenants.ts'
import { ownProcess } from './processes.ts'

const faultRoutes: FastifyPluginAsync = async (instance: FastifyInstance) => {
  const fastify = instance.withTypeProvider<TypeBoxTypeProvider>()
  const { kernel } = fastify

  fastify.get('/v1/processes/:pid/faults', {
    schema: {
      tags: ['faults'],
      summary: 'The newest IOMMU faults of a process',
      params: PidParams,
      response: { 200: FaultList, ...problems(...AUTH_ERRORS, 404) }
    }
  }, async (request) => {
    const p = ownProcess(kernel, tenantOf(request), request.params.pid)
    return {
      total: p.mm.faultsTotal,
      faults: p.mm.faultQueue.map(f => ({
        pasid: f.pasid,
        addr: typeof f.addr === 'bigint' ? `0x${f.addr.toString(16)}` : hex(f.addr),
        write: f.write,
        reason: f.reason,
        ...(f.served === undefined ? {} : { served: f.served }),
        ...(f.device === undefined ? {} : { device: f.device }),
        at: new Date(f.at).toISOString()
      }))
    }
  })
}

export default faultRoutes
