/**
 * Files that processes can map: create, list, show, pwrite, pread, fsync (writeback with
 * stable pages), delete. A file belongs to the tenant that created it.
 */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Errors, invalidField, unwrap } from '../src/errors.ts'
import type { File } from '../src/kernel/file.ts'
import type { Kernel } from '../src/kernel/kernel.ts'
import { AUTH_ERRORS, BODY_ERRORS, NoContent, OctetStream, problems } from '../src/schemas/common.ts'
import { FileCreateBody, FileList, FileParams, FileReadQuery, FileView, FileWriteQuery, FileWritten, Fsynced } from '../src/schemas/files.ts'
import type { Tenant } from '../src/schemas/tenants.ts'
import { tenantOf } from '../src/tenants.ts'
import { octets } from './memory.ts'

export function ownFile (kernel: Kernel, tenant: Tenant, id: string): File {
  const entry = kernel.files.get(id)
  if (entry === undefined || entry.tenant !== tenant.id) throw new Errors.NotFound(`file ${id} not found`)
  return entry.file
}

export function filesOf (kernel: Kernel, tenantId: string): File[] {
  const out: File[] = []
  for (const { file, tenant } of kernel.files.values()) if (tenant === tenantId) out.push(file)
  return out
}

function view (f: File): FileView {
  return {
    id: f.id,
    size: f.size,
    cachedPages: f.pages.size,
    dirtyPages: f.dirty.size,
    pagesWrittenBack: f.pagesWrittenBack,
    mapCount: f.mapCount
  }
}

const fileRoutes: FastifyPluginAsync = async (instance: FastifyInstance) => {
  const fastify = instance.withTypeProvider<TypeBoxTypeProvider>()
  const { kernel } = fastify
  const limit = fastify.config.WARPD_MAX_BODY_BYTES

  fastify.post('/v1/files', {
    schema: {
      tags: ['files'],
      summary: 'Create a file',
      body: FileCreateBody,
      response: { 201: FileView, ...problems(...AUTH_ERRORS, ...BODY_ERRORS, 422) }
    }
  }, async (request, reply) => {
    const file = unwrap(kernel.createFile(tenantOf(request).id, request.body.size ?? 0))
    return await reply.code(201).send(view(file))
  })

  fastify.get('/v1/files', {
    schema: {
      tags: ['files'],
      summary: 'List the tenant\'s files',
      response: { 200: FileList, ...problems(...AUTH_ERRORS) }
    }
  }, async (request) => {
    return { files: filesOf(kernel, tenantOf(request).id).map(view) }
  })

  fastify.get('/v1/files/:id', {
    schema: {
      tags: ['files'],
      summary: 'Show a file',
      params: FileParams,
      response: { 200: FileView, ...problems(...AUTH_ERRORS, 404) }
    }
  }, async (request) => {
    return view(ownFile(kernel, tenantOf(request), request.params.id))
  })

  fastify.put('/v1/files/:id/data', {
    schema: {
      tags: ['files'],
      summary: 'pwrite the body at offset through the page cache; the file grows as needed',
      params: FileParams,
      querystring: FileWriteQuery,
      consumes: ['application/octet-stream'],
      response: { 200: FileWritten, ...problems(...AUTH_ERRORS, 404, 413, 415, 422, 507) }
    }
  }, async (request) => {
    const file = ownFile(kernel, tenantOf(request), request.params.id)
    const written = unwrap(file.write(request.query.offset ?? 0, octets(request.body)))
    return { written, size: file.size }
  })

  fastify.get('/v1/files/:id/data', {
    schema: {
      tags: ['files'],
      summary: 'pread `length` bytes at offset (by default up to the end); cut at the file size',
      params: FileParams,
      querystring: FileReadQuery,
      response: { 200: OctetStream, ...problems(...AUTH_ERRORS, 404) }
    }
  }, async (request, reply) => {
    const file = ownFile(kernel, tenantOf(request), request.params.id)
    const offset = request.query.offset ?? 0
    const length = request.query.length ?? Math.max(0, file.size - offset)
    if (length > limit) throw invalidField('length', 'querystring', `must be <= ${limit} (WARPD_MAX_BODY_BYTES); read the file in parts`)
    const bytes = unwrap(file.read(offset, length))
    return await reply.type('application/octet-stream').send(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength))
  })

  fastify.post('/v1/files/:id/fsync', {
    schema: {
      tags: ['files'],
      summary: 'Write the dirty pages back, each kept stable while written',
      params: FileParams,
      response: { 200: Fsynced, ...problems(...AUTH_ERRORS, 404) }
    }
  }, async (request) => {
    const file = ownFile(kernel, tenantOf(request), request.params.id)
    return { pagesWritten: await file.fsync() }
  })

  fastify.delete('/v1/files/:id', {
    schema: {
      tags: ['files'],
      summary: 'Unlink a file; its pages stay while a process maps it',
      params: FileParams,
      response: { 204: NoContent, ...problems(...AUTH_ERRORS, 404) }
    }
  }, async (request, reply) => {
    const file = ownFile(kernel, tenantOf(request), request.params.id)
    kernel.deleteFile(file.id)
    return await reply.code(204).send(null)
  })
}

export default fileRoutes
