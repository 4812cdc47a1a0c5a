/**
 * mmap (POST), the mapping list (GET), munmap (DELETE, the whole mapping or a
 * page-aligned part) and mprotect (PATCH) of a process's address space.
 */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Errors, hex, unwrap } from '../src/errors.ts'
import { Errno, type Result } from '../src/hw/errno.ts'
import type { MappingInfo, Mm } from '../src/kernel/mm.ts'
import { Prot } from '../src/kernel/vma.ts'
import { AddrParams, AUTH_ERRORS, BODY_ERRORS, PidParams, problems } from '../src/schemas/common.ts'
import { Mapping, MappingList, MmapBody, MprotectBody, MunmapQuery, Unmapped, type ProtIn } from '../src/schemas/mappings.ts'
import { tenantOf } from '../src/tenants.ts'
import { ownFile } from './files.ts'
import { checkMemoryQuota, ownProcess } from './processes.ts'

const PAGE_SIZE = 4096

export function parseAddr (s: string): number {
  return Number.parseInt(s.slice(2), 16)
}

export function protBits (p: ProtIn): number {
  const rights: string[] = typeof p === 'string' ? [...(p === 'none' ? '' : p)].map(c => (c === 'r' ? 'read' : 'write')) : p
  let bits: number = Prot.NONE
  if (rights.includes('read')) bits |= Prot.READ
  if (rights.includes('write')) bits |= Prot.WRITE
  return bits
}

export function protString (bits: number): Mapping['prot'] {
  const r = (bits & Prot.READ) !== 0
  const w = (bits & Prot.WRITE) !== 0
  if (r && w) return 'rw'
  if (r) return 'r'
  if (w) return 'w'
  return 'none'
}

function view (m: MappingInfo): Mapping {
  const v: Mapping = {
    addr: hex(m.start),
    end: hex(m.end),
    length: m.end - m.start,
    prot: protString(m.prot),
    shared: m.shared,
    offset: m.offset,
    dontcopy: m.dontcopy,
    residentPages: m.resident
  }
  if (m.file !== undefined) v.file = m.file
  return v
}

/**
 * mmap, munmap and mprotect answer ENOMEM, as in Linux, only for the process's own limits
 * (mappings, address space): the caller's to respect, so a 409 that says which, not the
 * 507 of the machine's memory running out.
 */
function unwrapMm<T> (r: Result<T>): T {
  if (!r.ok && r.errno === Errno.ENOMEM) throw new Errors.ProcessLimit(r.message)
  return unwrap(r)
}

/** Without a length, munmap and mprotect take the whole mapping that starts at addr. */
function wholeMapping (mm: Mm, addr: number): number {
  const v = mm.findVma(addr)
  if (v === undefined || v.start !== addr) throw new Errors.NotFound(`no mapping starts at ${hex(addr)}`)
  return v.end - v.start
}

const mappingRoutes: FastifyPluginAsync = async (instance: FastifyInstance) => {
  const fastify = instance.withTypeProvider<TypeBoxTypeProvider>()
  const { kernel } = fastify

  fastify.post('/v1/processes/:pid/mappings', {
    schema: {
      tags: ['mappings'],
      summary: 'mmap: anonymous or file-backed, private or shared',
      params: PidParams,
      body: MmapBody,
      response: { 201: Mapping, ...problems(...AUTH_ERRORS, ...BODY_ERRORS, 404, 409) }
    }
  }, async (request, reply) => {
    const tenant = tenantOf(request)
    const p = ownProcess(kernel, tenant, request.params.pid)
    const body = request.body
    const length = Math.ceil(body.length / PAGE_SIZE) * PAGE_SIZE
    checkMemoryQuota(kernel, tenant, length)
    const file = body.file === undefined ? undefined : ownFile(kernel, tenant, body.file)
    const addr = unwrapMm(p.mm.mmap({
      length,
      prot: protBits(body.prot),
      shared: body.shared ?? false,
      file,
      offset: body.offset,
      dontcopy: body.dontcopy,
      addr: body.addr === undefined ? undefined : parseAddr(body.addr)
    }))
    const created = p.mm.mappings().find(m => m.start === addr)
    if (created === undefined) throw new Errors.Internal(`mapping at ${hex(addr)} vanished`)
    return await reply.code(201).send(view(created))
  })

  fastify.get('/v1/processes/:pid/mappings', {
    schema: {
      tags: ['mappings'],
      summary: 'List the mappings (vmas) of a process, lowest address first',
      params: PidParams,
      response: { 200: MappingList, ...problems(...AUTH_ERRORS, 404) }
    }
  }, async (request) => {
    const p = ownProcess(kernel, tenantOf(request), request.params.pid)
    return { mappings: p.mm.mappings().map(view) }
  })

  fastify.delete('/v1/processes/:pid/mappings/:addr', {
    schema: {
      tags: ['mappings'],
      summary: 'munmap: the whole mapping starting at addr, or `length` bytes from addr',
      params: AddrParams,
      querystring: MunmapQuery,
      response: { 200: Unmapped, ...problems(...AUTH_ERRORS, 404, 409) }
    }
  }, async (request) => {
    const p = ownProcess(kernel, tenantOf(request), request.params.pid)
    const addr = parseAddr(request.params.addr)
    const length = request.query.length ?? wholeMapping(p.mm, addr)
    const bytes = unwrapMm(p.mm.munmap(addr, length))
    return { addr: hex(addr), length: bytes }
  })

  fastify.patch('/v1/processes/:pid/mappings/:addr', {
    schema: {
      tags: ['mappings'],
      summary: 'mprotect: the whole mapping starting at addr, or `length` bytes from addr',
      params: AddrParams,
      body: MprotectBody,
      response: { 200: MappingList, ...problems(...AUTH_ERRORS, ...BODY_ERRORS, 404, 409) }
    }
  }, async (request) => {
    const p = ownProcess(kernel, tenantOf(request), request.params.pid)
    const addr = parseAddr(request.params.addr)
    const length = request.body.length ?? wholeMapping(p.mm, addr)
    const end = addr + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE
    const r = p.mm.mprotect(addr, length, protBits(request.body.prot))
    // Linux says ENOMEM for a hole in the range; over HTTP that read as the server out of
    // memory (507), where the tenant named memory it does not have mapped.
    if (!r.ok && r.errno === Errno.ENOMEM && !p.mm.covers(addr, end)) {
      throw new Errors.NotFound(`[${hex(addr)}, ${hex(end)}) is not wholly mapped; mprotect changed nothing`)
    }
    unwrapMm(r)
    return { mappings: p.mm.mappings().filter(m => m.start < end && m.end > addr).map(view) }
  })
}

export default mappingRoutes
