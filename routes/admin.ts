/** Tenants, managed with the admin token (the scope in src/app.ts checks it). */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Errors } from '../src/errors.ts'
import type { Kernel } from '../src/kernel/kernel.ts'
import { BODY_ERRORS, NoContent, problems } from '../src/schemas/common.ts'
import { TenantCreateBody, TenantCreated, TenantList, TenantParams, TenantView, type Tenant } from '../src/schemas/tenants.ts'
import { filesOf } from './files.ts'
import { processesOf } from './processes.ts'

const ADMIN_ERRORS = [400, 401, 403, 500] as const

function view (kernel: Kernel, t: Tenant): TenantView {
  const procs = processesOf(kernel, t.id)
  let memoryBytes = 0
  for (const p of procs) memoryBytes += p.mm.totalVm
  return { ...t, usage: { processes: procs.length, memoryBytes, files: filesOf(kernel, t.id).length } }
}

const adminRoutes: FastifyPluginAsync = async (instance: FastifyInstance) => {
  const fastify = instance.withTypeProvider<TypeBoxTypeProvider>()
  const { kernel, tenants } = fastify

  function lookup (id: string): Tenant {
    const t = tenants.get(id)
    if (t === undefined) throw new Errors.NotFound(`tenant ${id} not found`)
    return t
  }

  fastify.post('/v1/admin/tenants', {
    schema: {
      tags: ['admin'],
      summary: 'Create a tenant; the answer carries its token, shown this once',
      body: TenantCreateBody,
      response: { 201: TenantCreated, ...problems(...ADMIN_ERRORS, ...BODY_ERRORS, 409) }
    }
  }, async (request, reply) => {
    const { tenant, token } = await tenants.create(request.body)
    request.log.info({ tenant: tenant.id, name: tenant.name }, 'tenant created')
    return await reply.code(201).send({ ...tenant, token })
  })

  fastify.get('/v1/admin/tenants', {
    schema: {
      tags: ['admin'],
      summary: 'List tenants with their usage',
      response: { 200: TenantList, ...problems(...ADMIN_ERRORS) }
    }
  }, async () => ({ tenants: tenants.list().map(t => view(kernel, t)) }))

  fastify.get('/v1/admin/tenants/:tenant', {
    schema: {
      tags: ['admin'],
      summary: 'Show a tenant with its usage',
      params: TenantParams,
      response: { 200: TenantView, ...problems(...ADMIN_ERRORS, 404) }
    }
  }, async (request) => view(kernel, lookup(request.params.tenant)))

  fastify.delete('/v1/admin/tenants/:tenant', {
    schema: {
      tags: ['admin'],
      summary: 'Delete a tenant: its processes exit, its files are unlinked, its token stops working',
      params: TenantParams,
      response: { 204: NoContent, ...problems(...ADMIN_ERRORS, 404) }
    }
  }, async (request, reply) => {
    const t = lookup(request.params.tenant)
    // The token goes first, so no request of the tenant races the teardown.
    await tenants.delete(t.id)
    fastify.rateLimiter.forget(t.id)
    for (const p of processesOf(kernel, t.id)) kernel.exit(p)
    for (const f of filesOf(kernel, t.id)) kernel.deleteFile(f.id)
    request.log.info({ tenant: t.id }, 'tenant deleted')
    return await reply.code(204).send(null)
  })
}

export default adminRoutes
