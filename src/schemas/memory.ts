import { Type } from '@sinclair/typebox'
import { HexAddress } from './common.ts'

export const LoadQuery = Type.Object({
  length: Type.Integer({ minimum: 0, description: 'bytes to read; at most WARPD_MAX_BODY_BYTES' })
}, { additionalProperties: false })

export const Stored = Type.Object({
  addr: HexAddress,
  written: Type.Integer({ minimum: 0 })
}, { description: 'the store completed' })
