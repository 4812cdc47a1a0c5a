/**
 * Processes: create, list, show, exit, fork. A tenant sees only its own: anyone else's
 * pid, like an exited one, answers 404.
 */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Errors, unwrap } from '../src/errors.ts'
import type { Kernel } from '../src/kernel/kernel.ts'
import type { Process } from '../src/kernel/process.ts'
import { AUTH_ERRORS, NoContent, PidParams, problems } from '../src/schemas/common.ts'
import { ProcessList, ProcessView } from '../src/schemas/processes.ts'
import type { Tenant } from '../src/schemas/tenants.ts'
import { tenantOf } from '../src/tenants.ts'

/** The tenant's running process `pid`, or a 404 that says nothing of other tenants. */
export function ownProcess (kernel: Kernel, tenant: Tenant, pid: number): Process {
  const p = kernel.getProcess(pid)
  if (p === undefined || p.tenant !== tenant.id) throw new Errors.NotFound(`process ${pid} not found`)
  return p
}

export function processesOf (kernel: Kernel, tenantId: string): Process[] {
  const out: Process[] = []
  for (const p of kernel.processes.values()) if (p.state === 'running' && p.tenant === tenantId) out.push(p)
  return out
}

/** The memory quota counts mapped bytes (totalVm) over every process of the tenant. */
export function tenantVm (kernel: Kernel, tenantId: string): number {
  let sum = 0
  for (const p of processesOf(kernel, tenantId)) sum += p.mm.totalVm
  return sum
}

export function checkMemoryQuota (kernel: Kernel, tenant: Tenant, more: number): void {
  const used = tenantVm(kernel, tenant.id)
  if (used + more > tenant.quotas.memoryBytes) {
    throw new Errors.Quota(`memory quota: ${used} bytes mapped + ${more} exceeds ${tenant.quotas.memoryBytes}`)
  }
}

function checkProcessQuota (kernel: Kernel, tenant: Tenant): void {
  const n = processesOf(kernel, tenant.id).length
  if (n >= tenant.quotas.processes) throw new Errors.Quota(`process quota: ${n} of ${tenant.quotas.processes} processes running`)
}

export function viewProcess (p: Process): ProcessView {
  const v: ProcessView = {
    pid: p.pid,
    tenant: p.tenant,
    state: 'running',
    createdAt: new Date(p.createdAt).toISOString(),
    mappings: p.mm.vmas.length,
    totalVm: p.mm.totalVm,
    residentPages: p.mm.resident,
    faultsTotal: p.mm.faultsTotal
  }
  if (p.ppid !== undefined) v.ppid = p.ppid
  if (p.pasid !== undefined) v.pasid = p.pasid
  return v
}

const processRoutes: FastifyPluginAsync = async (instance: FastifyInstance) => {
  const fastify = instance.withTypeProvider<TypeBoxTypeProvider>()
  const { kernel } = fastify

  fastify.post('/v1/processes', {
    schema: {
      tags: ['processes'],
      summary: 'Create a process (an empty address space)',
      response: { 201: ProcessView, ...problems(...AUTH_ERRORS, 409) }
    }
  }, async (request, reply) => {
    const tenant = tenantOf(request)
    checkProcessQuota(kernel, tenant)
    const p = kernel.createProcess(tenant.id)
    return await reply.code(201).send(viewProcess(p))
  })

  fastify.get('/v1/processes', {
    schema: {
      tags: ['processes'],
      summary: 'List the tenant\'s processes',
      response: { 200: ProcessList, ...problems(...AUTH_ERRORS) }
    }
  }, async (request) => {
    return { processes: processesOf(kernel, tenantOf(request).id).map(viewProcess) }
  })

  fastify.get('/v1/processes/:pid', {
    schema: {
      tags: ['processes'],
      summary: 'Show a process',
      params: PidParams,
      response: { 200: ProcessView, ...problems(...AUTH_ERRORS, 404) }
    }
  }, async (request) => {
    return viewProcess(ownProcess(kernel, tenantOf(request), request.params.pid))
  })

  fastify.delete('/v1/processes/:pid', {
    schema: {
      tags: ['processes'],
      summary: 'Exit a process: its queues, PASID and memory go',
      params: PidParams,
      response: { 204: NoContent, ...problems(...AUTH_ERRORS, 404) }
    }
  }, async (request, reply) => {
    kernel.exit(ownProcess(kernel, tenantOf(request), request.params.pid))
    return await reply.code(204).send(null)
  })

  fastify.post('/v1/processes/:pid/fork', {
    schema: {
      tags: ['processes'],
      summary: 'Fork: a copy-on-write child with no PASID, queue or doorbell, nor dontcopy mappings',
      params: PidParams,
      response: { 201: ProcessView, ...problems(...AUTH_ERRORS, 404, 409, 507) }
    }
  }, async (request, reply) => {
    const tenant = tenantOf(request)
    const parent = ownProcess(kernel, tenant, request.params.pid)
    checkProcessQuota(kernel, tenant)
    let childVm = 0
    for (const v of parent.mm.vmas) if (!v.dontcopy) childVm += v.length
    checkMemoryQuota(kernel, tenant, childVm)
    const child = unwrap(kernel.fork(parent))
    return await reply.code(201).send(viewProcess(child))
  })
}

export default processRoutes
