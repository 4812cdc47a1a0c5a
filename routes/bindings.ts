/**
 * Bindings of a process to SVA devices (iommu_sva_bind_device): the PASID under which
 * the device walks the process's own page tables. One PASID per address space, the same
 * on every device; a binding per device, so unbinding one device leaves the others. A
 * device without SVA cannot be bound (WD_ERR_NO_SVA): it is shared through sync_only
 * queues instead. Creating a queue on an SVA device binds the process too.
 */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Errors, unwrap } from '../src/errors.ts'
import type { Process } from '../src/kernel/process.ts'
import { AUTH_ERRORS, BODY_ERRORS, NoContent, PidParams, problems } from '../src/schemas/common.ts'
import { Binding, BindingBody, BindingList, BindingParams } from '../src/schemas/queues.ts'
import { tenantOf } from '../src/tenants.ts'
import { deviceEntry } from './devices.ts'
import { ownProcess } from './processes.ts'

const bindingRoutes: FastifyPluginAsync = async (instance: FastifyInstance) => {
  const fastify = instance.withTypeProvider<TypeBoxTypeProvider>()
  const { kernel, uacce, bindings } = fastify

  function view (p: Process): Binding[] {
    const pasid = p.pasid
    if (pasid === undefined) return []
    return bindings.list(p).map(device => ({ device, pasid }))
  }

  fastify.post('/v1/processes/:pid/bindings', {
    schema: {
      tags: ['bindings'],
      summary: 'Bind a process to an SVA device: its PASID (idempotent)',
      params: PidParams,
      body: BindingBody,
      response: { 201: Binding, ...problems(...AUTH_ERRORS, ...BODY_ERRORS, 404, 409) }
    }
  }, async (request, reply) => {
    const p = ownProcess(kernel, tenantOf(request), request.params.pid)
    const { device } = request.body
    const d = deviceEntry(uacce, device)
    if (!d.dev.config.sva) {
      throw new Errors.NoSva(`device ${device} has no shared virtual addressing: it cannot be bound; create a sync_only queue on it instead`)
    }
    const pasid = unwrap(uacce.bind(p, device))
    bindings.add(p, device)
    return await reply.code(201).send({ device, pasid })
  })

  fastify.get('/v1/processes/:pid/bindings', {
    schema: {
      tags: ['bindings'],
      summary: 'List the devices a process is bound to',
      params: PidParams,
      response: { 200: BindingList, ...problems(...AUTH_ERRORS, 404) }
    }
  }, async (request) => {
    return { bindings: view(ownProcess(kernel, tenantOf(request), request.params.pid)) }
  })

  fastify.delete('/v1/processes/:pid/bindings/:dev', {
    schema: {
      tags: ['bindings'],
      summary: 'Unbind a process from a device; refused while it has queues there. The last unbind frees the PASID',
      params: BindingParams,
      response: { 204: NoContent, ...problems(...AUTH_ERRORS, 404, 409) }
    }
  }, async (request, reply) => {
    const p = ownProcess(kernel, tenantOf(request), request.params.pid)
    const { dev } = request.params
    deviceEntry(uacce, dev)
    if (!bindings.has(p, dev)) throw new Errors.NotFound(`process ${p.pid} is not bound to ${dev}`)
    const open = [...uacce.queues.values()].filter(q => q.process === p && q.device.dev.id === dev)
    if (open.length > 0) {
      throw new Errors.Conflict(`process ${p.pid} has ${open.length} queue(s) on ${dev} (${open.map(q => q.qid).join(', ')}): release them first`)
    }
    // The PASID goes with the last binding, and only when no queue (on any device) uses it.
    if (bindings.delete(p, dev) === 0 && ![...uacce.queues.values()].some(q => q.process === p && q.port !== undefined)) {
      kernel.unbindPasid(p)
    }
    return await reply.code(204).send(null)
  })
}

export default bindingRoutes
