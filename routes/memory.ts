/**
 * The CPU's view of a process's memory: loads (GET) and stores (PUT, octet-stream),
 * faulting pages in as a CPU would. A fault answers EFAULT with the faulting address
 * and, for a store, the bytes written before it.
 */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Errors, hex, invalidField, unwrap } from '../src/errors.ts'
import { AddrParams, AUTH_ERRORS, OctetStream, problems } from '../src/schemas/common.ts'
import { LoadQuery, Stored } from '../src/schemas/memory.ts'
import { tenantOf } from '../src/tenants.ts'
import { parseAddr } from './mappings.ts'
import { ownProcess } from './processes.ts'

/** The body of an octet-stream route: a Buffer, an empty one when there is no body. */
export function octets (body: unknown): Buffer {
  if (body === undefined || body === null) return Buffer.alloc(0)
  if (!Buffer.isBuffer(body)) throw new Errors.UnsupportedMediaType('the body must be application/octet-stream')
  return body
}

const memoryRoutes: FastifyPluginAsync = async (instance: FastifyInstance) => {
  const fastify = instance.withTypeProvider<TypeBoxTypeProvider>()
  const { kernel } = fastify
  const limit = fastify.config.WARPD_MAX_BODY_BYTES

  fastify.get('/v1/processes/:pid/memory/:addr', {
    schema: {
      tags: ['memory'],
      summary: 'CPU load of `length` bytes at addr',
      params: AddrParams,
      querystring: LoadQuery,
      response: { 200: OctetStream, ...problems(...AUTH_ERRORS, 404, 422, 507) }
    }
  }, async (request, reply) => {
    const p = ownProcess(kernel, tenantOf(request), request.params.pid)
    const { length } = request.query
    if (length > limit) throw invalidField('length', 'querystring', `must be <= ${limit} (WARPD_MAX_BODY_BYTES)`)
    const bytes = unwrap(p.mm.load(parseAddr(request.params.addr), length))
    return await reply.type('application/octet-stream').send(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength))
  })

  fastify.put('/v1/processes/:pid/memory/:addr', {
    schema: {
      tags: ['memory'],
      summary: 'CPU store of the body at addr',
      params: AddrParams,
      consumes: ['application/octet-stream'],
      response: { 200: Stored, ...problems(...AUTH_ERRORS, 404, 413, 415, 422, 507) }
    }
  }, async (request) => {
    const p = ownProcess(kernel, tenantOf(request), request.params.pid)
    const addr = parseAddr(request.params.addr)
    const written = unwrap(p.mm.store(addr, octets(request.body)))
    return { addr: hex(addr), written }
  })
}

export default memoryRoutes
