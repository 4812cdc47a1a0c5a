/**
 * The devices, as UACCE shows them in sysfs (api, flags, available_instances,
 * algorithms, isolate, isolate_strategy) with their live counters: every tenant may
 * read them, as every user may read /sys/class/uacce.
 */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { fromErrno } from '../src/errors.ts'
import { err } from '../src/hw/errno.ts'
import { QueueState } from '../src/hw/hw-queue.ts'
import type { DeviceEntry, Uacce } from '../src/kernel/uacce.ts'
import { AUTH_ERRORS, problems } from '../src/schemas/common.ts'
import { DeviceList, DeviceParams, DeviceView, type QueueStateName } from '../src/schemas/devices.ts'

const STATE_NAMES: Record<QueueState, QueueStateName> = {
  [QueueState.RUNNING]: 'running',
  [QueueState.ISOLATED]: 'isolated',
  [QueueState.RESETTING]: 'resetting',
  [QueueState.RELEASED]: 'released'
}

export function stateName (s: QueueState): QueueStateName {
  return STATE_NAMES[s]
}

/** The device `id`, or 404 ENODEV. */
export function deviceEntry (uacce: Uacce, id: string): DeviceEntry {
  const d = uacce.device(id)
  if (d === undefined) throw fromErrno(err('ENODEV', `no device ${id}`))
  return d
}

export function viewDevice (d: DeviceEntry): DeviceView {
  const dev = d.dev
  return {
    ...dev.attributes(),
    outstanding: dev.outstanding,
    inlineJobs: dev.inlineJobs,
    queues: dev.queues.map(q => ({
      index: q.index,
      mode: q.mode,
      depth: q.depth,
      priority: q.priority,
      allocated: q.allocated,
      state: stateName(q.state),
      ...(q.stateReason === '' ? {} : { stateReason: q.stateReason }),
      occupancy: q.occupancy,
      pending: q.pending,
      ports: q.ports.size,
      counters: { ...q.counters }
    })),
    iotlb: { hits: dev.iotlb.hits, misses: dev.iotlb.misses, entries: dev.iotlb.size, capacity: dev.iotlb.capacity },
    enginePool: dev.pool.stats()
  }
}

const deviceRoutes: FastifyPluginAsync = async (instance: FastifyInstance) => {
  const fastify = instance.withTypeProvider<TypeBoxTypeProvider>()
  const { uacce } = fastify

  fastify.get('/v1/devices', {
    schema: {
      tags: ['devices'],
      summary: 'List the devices with their attributes and live counters',
      response: { 200: DeviceList, ...problems(...AUTH_ERRORS) }
    }
  }, async () => ({ devices: [...uacce.devices.values()].map(viewDevice) }))

  fastify.get('/v1/devices/:dev', {
    schema: {
      tags: ['devices'],
      summary: 'Show a device: UACCE attributes, hardware queues, IOTLB and engines',
      params: DeviceParams,
      response: { 200: DeviceView, ...problems(...AUTH_ERRORS, 404) }
    }
  }, async (request) => viewDevice(deviceEntry(uacce, request.params.dev)))
}

export default deviceRoutes
