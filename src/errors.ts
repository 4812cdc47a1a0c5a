/**
 * The error catalogue: every error the API answers, with a stable code, its HTTP status
 * and a title. The kernel's errno names are codes here too, so a client sees the same
 * EFAULT the emulated kernel returned. Every error leaves as application/problem+json
 * (RFC 9457) through one error handler; docs/errors.md is the table of this file.
 */
import createError, { type FastifyError } from '@fastify/error'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Err, Errno } from './hw/errno.ts'

interface Entry {
  status: number
  title: string
  /** what a 5xx answers instead of its message, which may carry internals */
  generic?: string
}

export const CATALOGUE = {
  WD_ERR_BAD_REQUEST: { status: 400, title: 'Bad request' },
  WD_ERR_VALIDATION: { status: 400, title: 'Validation failed' },
  WD_ERR_UNAUTHORIZED: { status: 401, title: 'Unauthorized' },
  WD_ERR_FORBIDDEN: { status: 403, title: 'Forbidden' },
  WD_ERR_NOT_FOUND: { status: 404, title: 'Not found' },
  WD_ERR_CONFLICT: { status: 409, title: 'Conflict' },
  WD_ERR_QUOTA: { status: 409, title: 'Tenant quota exceeded' },
  WD_ERR_PROCESS_LIMIT: { status: 409, title: 'Process limit reached' },
  WD_ERR_NO_SVA: { status: 409, title: 'Device without shared virtual addressing' },
  WD_ERR_PAYLOAD_TOO_LARGE: { status: 413, title: 'Payload too large' },
  WD_ERR_UNSUPPORTED_MEDIA_TYPE: { status: 415, title: 'Unsupported media type' },
  WD_ERR_RATE_LIMITED: { status: 429, title: 'Too many requests' },
  WD_ERR_INFLIGHT: { status: 429, title: 'Too many descriptors in flight' },
  WD_ERR_INTERNAL: { status: 500, title: 'Internal error', generic: 'The server failed to answer this request; the error is logged under the request id.' },
  WD_ERR_UNAVAILABLE: { status: 503, title: 'Service unavailable', generic: 'The server is not ready or is shutting down.' },

  EPERM: { status: 403, title: 'Operation not permitted' },
  ENOENT: { status: 404, title: 'No such entry' },
  ESRCH: { status: 404, title: 'No such process' },
  ENODEV: { status: 404, title: 'No such device' },
  EEXIST: { status: 409, title: 'Already exists' },
  EBUSY: { status: 409, title: 'Resource busy' },
  EINVAL: { status: 400, title: 'Invalid argument' },
  ERANGE: { status: 400, title: 'Out of range' },
  EOVERFLOW: { status: 400, title: 'Value too large' },
  EFAULT: { status: 422, title: 'Bad address' },
  EOPNOTSUPP: { status: 422, title: 'Operation not supported' },
  EFBIG: { status: 422, title: 'File too large' },
  EDQUOT: { status: 409, title: 'Quota exceeded' },
  EAGAIN: { status: 503, title: 'Try again', generic: 'The resource is temporarily unavailable; retry later.' },
  ENOMEM: { status: 507, title: 'Out of memory', generic: 'Not enough memory: the physical frames ran out.' },
  ENOSPC: { status: 507, title: 'No space left', generic: 'The device or table has no room left.' }
} as const satisfies Record<string, Entry>

export type ErrorCode = keyof typeof CATALOGUE

/** Fields a problem may carry besides the RFC 9457 ones. */
export interface ProblemExtras {
  /** the bad field of a validation error, dotted (`quotas.memoryBytes`) */
  field?: string
  /** where the bad field is: body, querystring, params or headers */
  in?: string
  /** the faulting address of an EFAULT */
  addr?: number
  /** bytes done before the error, for partial loads and stores */
  done?: number
  /** seconds, for 429 and 503 */
  retryAfter?: number
}

export type WdError = FastifyError & ProblemExtras

function define<const C extends ErrorCode> (code: C): createError.FastifyErrorConstructor<{ code: C, statusCode: typeof CATALOGUE[C]['status'] }, [string]> {
  return createError<C, typeof CATALOGUE[C]['status'], [string]>(code, '%s', CATALOGUE[code].status)
}

export const Errors = {
  BadRequest: define('WD_ERR_BAD_REQUEST'),
  Validation: define('WD_ERR_VALIDATION'),
  Unauthorized: define('WD_ERR_UNAUTHORIZED'),
  Forbidden: define('WD_ERR_FORBIDDEN'),
  NotFound: define('WD_ERR_NOT_FOUND'),
  Conflict: define('WD_ERR_CONFLICT'),
  Quota: define('WD_ERR_QUOTA'),
  ProcessLimit: define('WD_ERR_PROCESS_LIMIT'),
  NoSva: define('WD_ERR_NO_SVA'),
  PayloadTooLarge: define('WD_ERR_PAYLOAD_TOO_LARGE'),
  UnsupportedMediaType: define('WD_ERR_UNSUPPORTED_MEDIA_TYPE'),
  RateLimited: define('WD_ERR_RATE_LIMITED'),
  Inflight: define('WD_ERR_INFLIGHT'),
  Internal: define('WD_ERR_INTERNAL'),
  Unavailable: define('WD_ERR_UNAVAILABLE')
} as const

const ERRNO_ERRORS: { [E in Errno]: ReturnType<typeof define<E>> } = {
  EPERM: define('EPERM'),
  ENOENT: define('ENOENT'),
  ESRCH: define('ESRCH'),
  EAGAIN: define('EAGAIN'),
  ENOMEM: define('ENOMEM'),
  EFAULT: define('EFAULT'),
  EBUSY: define('EBUSY'),
  EEXIST: define('EEXIST'),
  ENODEV: define('ENODEV'),
  EINVAL: define('EINVAL'),
  ENOSPC: define('ENOSPC'),
  EFBIG: define('EFBIG'),
  ERANGE: define('ERANGE'),
  EOPNOTSUPP: define('EOPNOTSUPP'),
  EOVERFLOW: define('EOVERFLOW'),
  EDQUOT: define('EDQUOT')
}

/** Attaches problem extras to a catalogue error. */
export function withExtras<E extends FastifyError> (error: E, extras: ProblemExtras): E & ProblemExtras {
  return Object.assign(error, extras)
}

/** A field-level validation error found by a handler rather than by the schema. */
export function invalidField (field: string, where: string, detail: string): WdError {
  return withExtras(new Errors.Validation(`${field} ${detail}`), { field, in: where })
}

/** The catalogue error for a kernel Result error, keeping its address and progress. */
export function fromErrno (e: Err): WdError {
  const error: WdError = new ERRNO_ERRORS[e.errno](e.message)
  if (e.addr !== undefined) error.addr = e.addr
  if (e.done !== undefined) error.done = e.done
  return error
}

/** Unwraps a kernel Result in a handler: the value, or the catalogue error thrown. */
export function unwrap<T> (r: { ok: true, value: T } | Err): T {
  if (!r.ok) throw fromErrno(r)
  return r.value
}

export function isErrorCode (code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(CATALOGUE, code)
}

export function hex (n: number): string {
  return `0x${n.toString(16)}`
}

/** The problem+json body; its schema is src/schemas/common.ts's Problem. */
export interface Problem {
  type: string
  title: string
  status: number
  code: ErrorCode
  detail: string
  instance: string
  requestId: string
  field?: string
  in?: string
  addr?: string
  done?: number
  retryAfter?: number
}

export function problemType (code: ErrorCode): string {
  return `urn:warpdrive:error:${code}`
}

export function buildProblem (request: FastifyRequest, code: ErrorCode, detail: string, extras: ProblemExtras = {}): Problem {
  const entry: Entry = CATALOGUE[code]
  const problem: Problem = {
    type: problemType(code),
    title: entry.title,
    status: entry.status,
    code,
    detail: entry.status >= 500 ? entry.generic ?? 'The server failed to answer this request.' : detail,
    instance: request.url,
    requestId: String(request.id)
  }
  if (extras.field !== undefined) problem.field = extras.field
  if (extras.in !== undefined) problem.in = extras.in
  if (extras.addr !== undefined) problem.addr = hex(extras.addr)
  if (extras.done !== undefined) problem.done = extras.done
  if (extras.retryAfter !== undefined) problem.retryAfter = extras.retryAfter
  return problem
}

export function sendProblem (reply: FastifyReply, problem: Problem): FastifyReply {
  if (problem.retryAfter !== undefined) reply.header('retry-after', String(problem.retryAfter))
  if (problem.code === 'WD_ERR_UNAUTHORIZED') reply.header('www-authenticate', 'Bearer realm="warpd"')
  return reply.code(problem.status).type('application/problem+json').send(problem)
}

interface AjvError { instancePath: string, message?: string, params: Record<string, unknown> }

/** The dotted name of the field an AJV error is about. */
export function fieldOf (v: AjvError, context: string): string {
  const path = v.instancePath.split('/').slice(1).map(s => s.replaceAll('~1', '/').replaceAll('~0', '~'))
  const leaf = v.params.missingProperty ?? v.params.additionalProperty
  if (typeof leaf === 'string') path.push(leaf)
  return path.length > 0 ? path.join('.') : context
}

/** Fastify's own errors we answer as catalogue errors (it picks the status, we the code). */
const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'WD_ERR_PAYLOAD_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'WD_ERR_UNSUPPORTED_MEDIA_TYPE'
}

/** The one error handler: everything leaves as problem+json; a 5xx never shows its message. */
export function errorHandler (error: WdError & { validation?: AjvError[], validationContext?: string }, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  let code: ErrorCode
  let detail = error.message
  const extras: ProblemExtras = { field: error.field, in: error.in, addr: error.addr, done: error.done, retryAfter: error.retryAfter }
  if (Array.isArray(error.validation) && error.validation.length > 0) {
    const v = error.validation[0]
    const where = error.validationContext ?? 'body'
    code = 'WD_ERR_VALIDATION'
    extras.field = fieldOf(v, where)
    extras.in = where
    detail = `${extras.field} ${v.message ?? 'is invalid'}`
  } else if (isErrorCode(error.code)) {
    code = error.code
  } else if (Object.hasOwn(FASTIFY_CODES, error.code)) {
    code = FASTIFY_CODES[error.code]
  } else if (error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500) {
    // Fastify's other client errors (bad JSON, bad content-length): its messages are safe.
    code = 'WD_ERR_BAD_REQUEST'
  } else {
    code = 'WD_ERR_INTERNAL'
  }
  if (CATALOGUE[code].status >= 500) request.log.error({ err: error, code }, 'request failed')
  else request.log.debug({ code, detail }, 'request refused')
  return sendProblem(reply, buildProblem(request, code, detail, extras))
}

export function notFoundHandler (request: FastifyRequest, reply: FastifyReply): FastifyReply {
  return sendProblem(reply, buildProblem(request, 'WD_ERR_NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`))
}
