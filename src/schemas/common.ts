/**
 * Shapes shared by every route: addresses, ids, the problem body and the error
 * responses. Addresses travel as hex strings because JSON numbers past 2^53 are not
 * portable and hex is how addresses are read; sizes travel as integers.
 */
import { Type, type Static, type TRef } from '@sinclair/typebox'
import { CATALOGUE } from '../errors.ts'

/** A user virtual address: below TASK_SIZE (2^47), so at most 12 hex digits. */
export const HexAddress = Type.String({
  pattern: '^0x[0-9a-fA-F]{1,12}$',
  description: 'a virtual address, hexadecimal with a 0x prefix',
  examples: ['0x7f0000001000']
})

/** Any 64-bit value: a tag, or an address as a descriptor named it (up to 2^64 - 1). */
export const Hex64 = Type.String({ pattern: '^0x[0-9a-fA-F]{1,16}$', description: 'a 64-bit value, hexadecimal with a 0x prefix' })

export const Pid = Type.Integer({ minimum: 1, description: 'process id' })

export const PidParams = Type.Object({ pid: Pid })
export type PidParams = Static<typeof PidParams>

export const AddrParams = Type.Object({ pid: Pid, addr: HexAddress })
export type AddrParams = Static<typeof AddrParams>

export const Problem = Type.Object({
  type: Type.String({ description: 'urn:warpdrive:error:<code>' }),
  title: Type.String(),
  status: Type.Integer(),
  code: Type.Unsafe<keyof typeof CATALOGUE>({ type: 'string', enum: Object.keys(CATALOGUE), description: 'stable error code; see docs/errors.md' }),
  detail: Type.String(),
  instance: Type.String({ description: 'the request path' }),
  requestId: Type.String(),
  field: Type.Optional(Type.String({ description: 'the bad field of a validation error, dotted' })),
  in: Type.Optional(Type.String({ description: 'where the bad field is: body, querystring, params' })),
  addr: Type.Optional(HexAddress),
  done: Type.Optional(Type.Integer({ minimum: 0, description: 'bytes done before the error' })),
  retryAfter: Type.Optional(Type.Integer({ minimum: 0, description: 'seconds' }))
}, {
  $id: 'Problem',
  title: 'Problem',
  description: 'RFC 9457 problem details, sent as application/problem+json',
  // Errors added later may carry fields of their own; the serializer must keep them.
  additionalProperties: true
})
export type Problem = Static<typeof Problem>

const STATUS_TEXT: Record<number, string> = {
  400: 'the request is invalid (WD_ERR_VALIDATION, WD_ERR_BAD_REQUEST, EINVAL)',
  401: 'no valid bearer token',
  403: 'the token is valid but not for this resource',
  404: 'no such resource, or not yours',
  409: 'conflict with the current state, or a quota exceeded',
  413: 'the body is larger than WARPD_MAX_BODY_BYTES',
  415: 'the body has the wrong content type',
  422: 'the kernel refused the operation (EFAULT, EOPNOTSUPP, EFBIG)',
  429: 'the tenant is over its request rate; see Retry-After',
  500: 'internal error',
  503: 'not ready or shutting down',
  507: 'out of memory (ENOMEM, ENOSPC)'
}

export interface ProblemResponse {
  description: string
  content: { 'application/problem+json': { schema: TRef<'Problem'> } }
}

/** Error responses for a route schema: the shared Problem, as application/problem+json. */
export function problems<const S extends readonly number[]> (...statuses: S): { [K in S[number]]: ProblemResponse } {
  const out: Record<number, ProblemResponse> = {}
  for (const s of statuses) {
    out[s] = {
      description: STATUS_TEXT[s] ?? 'error',
      content: { 'application/problem+json': { schema: Type.Ref('Problem') } }
    }
  }
  return out as { [K in S[number]]: ProblemResponse }
}

/** The errors every authenticated route can answer. */
export const AUTH_ERRORS = [400, 401, 403, 429, 500] as const

/** What a route with a JSON body can answer besides: too large, or not JSON. */
export const BODY_ERRORS = [413, 415] as const

export const NoContent = Type.Null({ description: 'no content' })

/** An octet-stream response body (the bytes are sent as a Buffer, never serialized). */
export const OctetStream = {
  description: 'the bytes',
  content: {
    'application/octet-stream': {
      schema: Type.String({ format: 'binary' })
    }
  }
}
