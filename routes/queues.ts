/**
 * Queues: create one on a device for a process (dedicated, shared, or on a device
 * without SVA sync_only), list, show, release, and the kernel-mediated submit of
 * PROTOCOL.md section 6. A queue belongs to the tenant of its process: anyone else's qid
 * answers 404, like a released one.
 */
import type { FastifyInstance, FastifyPluginAsync, FastifySchemaCompiler, FastifySchemaValidationError } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type, type TSchema } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { Errors, fromErrno, invalidField, unwrap, withExtras } from '../src/errors.ts'
import { CR_SIZE, DESC_SIZE, completionToJson, descriptorFromJson, readCompletion, writeDescriptor } from '../src/hw/descriptor.ts'
import { QueueKind, type Queue, type Uacce } from '../src/kernel/uacce.ts'
import { AUTH_ERRORS, BODY_ERRORS, NoContent, problems } from '../src/schemas/common.ts'
import { DeviceParams } from '../src/schemas/devices.ts'
import {
  CompletionList, MAX_SUBMIT_DESCRIPTORS, QueueCreateBody, QueueList, QueueListQuery, QueueParams, QueueView, SubmitJsonBody
} from '../src/schemas/queues.ts'
import type { Tenant } from '../src/schemas/tenants.ts'
import { tenantOf } from '../src/tenants.ts'
import { deviceEntry, stateName } from './devices.ts'
import { ownProcess } from './processes.ts'

/** The tenant's queue `qid`, or a 404 that says nothing of other tenants. */
export function ownQueue (uacce: Uacce, tenant: Tenant, qid: string): Queue {
  const q = uacce.queues.get(qid)
  if (q === undefined || q.tenant !== tenant.id) throw new Errors.NotFound(`queue ${qid} not found`)
  return q
}

export function queuesOf (uacce: Uacce, tenantId: string): Queue[] {
  const out: Queue[] = []
  for (const q of uacce.queues.values()) if (q.tenant === tenantId) out.push(q)
  return out
}

export function viewQueue (q: Queue): QueueView {
  const d = q.device
  const sva = d.dev.config.sva
  const v: QueueView = {
    qid: q.qid,
    device: d.dev.id,
    pid: q.process.pid,
    kind: q.kind,
    flags: sva ? [] : ['sync_only'],
    depth: q.hw?.depth ?? d.kernelQueues.reduce((sum, hw) => sum + hw.depth, 0),
    submit: `/v1/queues/${q.qid}/submit`,
    state: stateName(q.state),
    inflight: q.inflight,
    createdAt: new Date(q.createdAt).toISOString()
  }
  if (q.port !== undefined) {
    v.pasid = q.port.pasid
    v.doorbell = `/v1/queues/${q.qid}/doorbell`
  }
  if (q.hw !== undefined) v.hwQueue = q.hw.index
  return v
}

/**
 * The submit route's validator: params through TypeBox, the body not at all. A JSON body
 * is read by descriptorFromJson, which keeps 64-bit values exact and names the index and
 * field of a bad descriptor; AJV's type coercion (on in fastify by default) would turn
 * hex strings into numbers first and lose the bits above 2^53.
 */
const paramsOnly: FastifySchemaCompiler<unknown> = ({ schema, httpPart }) => {
  if (httpPart === 'body') return () => true
  const check = TypeCompiler.Compile(schema as TSchema)
  return (value: unknown) => {
    if (check.Check(value)) return true
    const error: FastifySchemaValidationError[] = [...check.Errors(value)].map(e => ({ keyword: 'typebox', instancePath: e.path, schemaPath: e.schema.$id ?? '', params: {}, message: e.message }))
    return { error }
  }
}

/** The field a descriptorFromJson message is about, as `<index>.<field>`. */
function descriptorField (i: number, message: string): string {
  const unknown = /^unknown descriptor field "(.+)"$/.exec(message)
  if (unknown !== null) return `${i}.${unknown[1]}`
  const named = /^([a-z_]+): /.exec(message)
  return named === null ? String(i) : `${i}.${named[1]}`
}

function tooMany (n: number): Error {
  return new Errors.PayloadTooLarge(`${n} descriptors: at most ${MAX_SUBMIT_DESCRIPTORS} per submission`)
}

/** The descriptor bytes of a submit body, octet-stream as it is or JSON encoded. */
function descriptorBytes (body: unknown): { bytes: Uint8Array, json: boolean } {
  if (Buffer.isBuffer(body)) {
    if (body.length === 0 || body.length % DESC_SIZE !== 0) {
      throw invalidField('body', 'body', `must be a whole number of ${DESC_SIZE}-byte descriptors, got ${body.length} bytes`)
    }
    if (body.length / DESC_SIZE > MAX_SUBMIT_DESCRIPTORS) throw tooMany(body.length / DESC_SIZE)
    return { bytes: body, json: false }
  }
  if (!Array.isArray(body)) {
    throw invalidField('body', 'body', body === undefined || body === null
      ? 'is empty: send N x 64 descriptor bytes (application/octet-stream) or a JSON array of descriptors'
      : 'must be a JSON array of descriptors')
  }
  if (body.length === 0) throw invalidField('body', 'body', 'must hold at least one descriptor')
  if (body.length > MAX_SUBMIT_DESCRIPTORS) throw tooMany(body.length)
  const bytes = new Uint8Array(body.length * DESC_SIZE)
  for (let i = 0; i < body.length; i++) {
    const d = descriptorFromJson(body[i])
    if (!d.ok) throw invalidField(descriptorField(i, d.message), 'body', `is invalid: ${d.message}`)
    writeDescriptor(bytes, i * DESC_SIZE, d.value)
  }
  return { bytes, json: true }
}

const SubmitAnswer = {
  description: 'one completion per descriptor, in order: JSON for a JSON body, N x 32 bytes for an octet-stream body',
  content: {
    'application/json': { schema: CompletionList },
    'application/octet-stream': { schema: Type.String({ format: 'binary' }) }
  }
}

const queueRoutes: FastifyPluginAsync = async (instance: FastifyInstance) => {
  const fastify = instance.withTypeProvider<TypeBoxTypeProvider>()
  const { kernel, uacce, bindings, inflight, metrics } = fastify

  fastify.post('/v1/devices/:dev/queues', {
    schema: {
      tags: ['queues'],
      summary: 'Create a queue for a process; on an SVA device this binds the process (PASID) if it was not',
      params: DeviceParams,
      body: QueueCreateBody,
      response: { 201: QueueView, ...problems(...AUTH_ERRORS, ...BODY_ERRORS, 404, 409) }
    }
  }, async (request, reply) => {
    const tenant = tenantOf(request)
    const { dev } = request.params
    const d = deviceEntry(uacce, dev)
    const p = ownProcess(kernel, tenant, request.body.pid)
    const kind = request.body.kind
    if (!d.dev.config.sva && kind !== undefined && kind !== QueueKind.SYNC_ONLY) {
      throw new Errors.NoSva(`device ${dev} has no shared virtual addressing: its queues are sync_only`)
    }
    const open = queuesOf(uacce, tenant.id).length
    if (open >= tenant.quotas.queues) throw new Errors.Quota(`queue quota: ${open} of ${tenant.quotas.queues} queues open`)
    const r = uacce.createQueue(p, dev, kind, tenant.weight)
    if (!r.ok) {
      if (r.errno === 'EBUSY') metrics.countEbusy(dev, tenant.id)
      throw fromErrno(r)
    }
    const q = r.value
    metrics.trackQueue(q)
    if (q.port !== undefined) bindings.add(p, dev)
    request.log.info({ qid: q.qid, device: dev, pid: p.pid, kind: q.kind }, 'queue created')
    return await reply.code(201).send(viewQueue(q))
  })

  fastify.get('/v1/queues', {
    schema: {
      tags: ['queues'],
      summary: 'List the tenant\'s queues',
      querystring: QueueListQuery,
      response: { 200: QueueList, ...problems(...AUTH_ERRORS) }
    }
  }, async (request) => {
    const { pid, device } = request.query
    const queues = queuesOf(uacce, tenantOf(request).id)
      .filter(q => (pid === undefined || q.process.pid === pid) && (device === undefined || q.device.dev.id === device))
    return { queues: queues.map(viewQueue) }
  })

  fastify.get('/v1/queues/:qid', {
    schema: {
      tags: ['queues'],
      summary: 'Show a queue',
      params: QueueParams,
      response: { 200: QueueView, ...problems(...AUTH_ERRORS, 404) }
    }
  }, async (request) => viewQueue(ownQueue(uacce, tenantOf(request), request.params.qid)))

  fastify.delete('/v1/queues/:qid', {
    schema: {
      tags: ['queues'],
      summary: 'Release a queue: work in flight completes ABORTED, a dedicated hardware queue is free again',
      params: QueueParams,
      response: { 204: NoContent, ...problems(...AUTH_ERRORS, 404) }
    }
  }, async (request, reply) => {
    const q = ownQueue(uacce, tenantOf(request), request.params.qid)
    uacce.releaseQueue(q)
    return await reply.code(204).send(null)
  })

  fastify.post('/v1/queues/:qid/submit', {
    schema: {
      tags: ['queues'],
      summary: 'Kernel-mediated submit (PROTOCOL.md section 6): N descriptors in, N completions out, in order',
      description: 'The body is N x 64 descriptor bytes (application/octet-stream; the answer is N x 32 completion bytes) ' +
        `or a JSON array of descriptors (the answer is a JSON array of completions), 1 to ${MAX_SUBMIT_DESCRIPTORS} of them. ` +
        'The kernel validates each descriptor, pins and maps the pages it names, waits for the device and answers ' +
        'every descriptor, whatever its flags. Descriptors in flight count against the tenant\'s `inflight` quota.',
      params: QueueParams,
      body: SubmitJsonBody,
      consumes: ['application/json', 'application/octet-stream'],
      response: { 200: SubmitAnswer, ...problems(...AUTH_ERRORS, ...BODY_ERRORS, 404, 409) }
    },
    validatorCompiler: paramsOnly
  }, async (request, reply) => {
    const tenant = tenantOf(request)
    const q = ownQueue(uacce, tenant, request.params.qid)
    const { bytes, json } = descriptorBytes(request.body)
    const n = bytes.length / DESC_SIZE
    const quota = tenant.quotas.inflight
    if (n > quota) throw new Errors.Quota(`${n} descriptors in one submission: the in-flight quota is ${quota}`)
    const now = inflight.get(tenant.id)
    if (now + n > quota) {
      throw withExtras(new Errors.Inflight(`${now} descriptors in flight + ${n} exceeds the quota of ${quota}`), { retryAfter: 1 })
    }
    inflight.add(tenant.id, n)
    let out: Uint8Array
    try {
      out = unwrap(await uacce.submit(q, bytes))
    } finally {
      inflight.sub(tenant.id, n)
    }
    metrics.countMediated(q.device.dev.id, tenant.id, out, CR_SIZE)
    if (!json) return await reply.type('application/octet-stream').send(Buffer.from(out.buffer, out.byteOffset, out.byteLength))
    const completions = []
    for (let i = 0; i < n; i++) completions.push(completionToJson(readCompletion(out, i * CR_SIZE)))
    return completions
  })
}

export default queueRoutes
