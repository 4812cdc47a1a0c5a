/**
 * Device management with the admin token: reset (everything in flight completes
 * ABORTED), fault injection (the error-containment drill: enough faults isolate a
 * queue), and clearing a queue's isolation (UACCE's isolate, which only an admin lifts).
 */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Errors, unwrap } from '../src/errors.ts'
import type { HwQueue } from '../src/hw/hw-queue.ts'
import type { DeviceEntry } from '../src/kernel/uacce.ts'
import { BODY_ERRORS, NoContent, problems } from '../src/schemas/common.ts'
import { AdminQueueParams, DeviceParams, FaultInjectionBody, FaultsInjected, ResetDone } from '../src/schemas/devices.ts'
import { deviceEntry, stateName } from './devices.ts'

const ADMIN_ERRORS = [400, 401, 403, 500] as const

function hwQueue (d: DeviceEntry, index: number): HwQueue {
  const q = d.dev.queues[index]
  if (q === undefined) throw new Errors.NotFound(`device ${d.dev.id} has no hardware queue ${index} (it has ${d.dev.queues.length})`)
  return q
}

const adminDeviceRoutes: FastifyPluginAsync = async (instance: FastifyInstance) => {
  const fastify = instance.withTypeProvider<TypeBoxTypeProvider>()
  const { uacce } = fastify

  fastify.post('/v1/admin/devices/:dev/reset', {
    schema: {
      tags: ['admin'],
      summary: 'Reset a device: every descriptor in flight completes ABORTED, isolation is cleared, the queues run again',
      params: DeviceParams,
      response: { 200: ResetDone, ...problems(...ADMIN_ERRORS, 404) }
    }
  }, async (request) => {
    const { dev } = request.params
    const d = deviceEntry(uacce, dev)
    // Everything accepted and not completed completes ABORTED: some at once, the rest
    // (running on an engine) when the engine hands it back.
    const aborted = d.dev.queues.reduce((n, q) => n + q.occupancy, 0)
    unwrap(uacce.reset(dev))
    request.log.warn({ device: dev, aborted }, 'device reset')
    return { device: dev, aborted }
  })

  fastify.post('/v1/admin/devices/:dev/queues/:index/faults', {
    schema: {
      tags: ['admin'],
      summary: 'Fault injection: count `count` faults against a hardware queue; past the isolate strategy it is isolated',
      params: AdminQueueParams,
      body: FaultInjectionBody,
      response: { 200: FaultsInjected, ...problems(...ADMIN_ERRORS, ...BODY_ERRORS, 404) }
    }
  }, async (request) => {
    const { dev, index } = request.params
    const d = deviceEntry(uacce, dev)
    const q = hwQueue(d, index)
    d.dev.injectFaults(q, request.body.count)
    request.log.warn({ device: dev, index, count: request.body.count, state: stateName(q.state) }, 'faults injected')
    return { device: dev, index, state: stateName(q.state), faults: q.counters.faults }
  })

  fastify.delete('/v1/admin/devices/:dev/queues/:index/isolation', {
    schema: {
      tags: ['admin'],
      summary: 'Clear a hardware queue\'s isolation: it runs again; 409 when it is not isolated',
      params: AdminQueueParams,
      response: { 204: NoContent, ...problems(...ADMIN_ERRORS, 404, 409) }
    }
  }, async (request, reply) => {
    const { dev, index } = request.params
    const d = deviceEntry(uacce, dev)
    const q = hwQueue(d, index)
    if (!d.dev.clearIsolation(q)) throw new Errors.Conflict(`hardware queue ${index} of ${dev} is ${stateName(q.state)}, not isolated`)
    request.log.info({ device: dev, index }, 'isolation cleared')
    return await reply.code(204).send(null)
  })
}

export default adminDeviceRoutes
