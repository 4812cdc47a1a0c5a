/**
 * mmap, munmap and mprotect over JSON. Protection is accepted as a short string or a
 * list of rights, and always answered as the short string.
 */
import { Type, type Static } from '@sinclair/typebox'
import { HexAddress } from './common.ts'
import { FileId } from './files.ts'

/** TASK_SIZE: nothing longer fits in a user address space. */
const MAX_LENGTH = 2 ** 47

export const ProtString = Type.Unsafe<'none' | 'r' | 'w' | 'rw'>({
  type: 'string',
  enum: ['none', 'r', 'w', 'rw'],
  description: 'protection: none, r, w or rw'
})

export const ProtIn = Type.Union([
  ProtString,
  Type.Array(Type.Unsafe<'read' | 'write'>({ type: 'string', enum: ['read', 'write'] }), { uniqueItems: true, maxItems: 2 })
], { description: 'protection as a short string ("r", "rw", "none") or a list of rights (["read", "write"])' })
export type ProtIn = Static<typeof ProtIn>

export const Length = Type.Integer({ minimum: 1, maximum: MAX_LENGTH, description: 'bytes; rounded up to whole pages' })

export const MmapBody = Type.Object({
  length: Length,
  prot: ProtIn,
  shared: Type.Optional(Type.Boolean({ default: false, description: 'MAP_SHARED: a fork child shares the pages, writes reach the file' })),
  file: Type.Optional(FileId),
  offset: Type.Optional(Type.Integer({ minimum: 0, multipleOf: 4096, default: 0, description: 'byte offset in the file, page aligned' })),
  dontcopy: Type.Optional(Type.Boolean({ default: false, description: 'MADV_DONTFORK: absent from a fork child' })),
  addr: Type.Optional({ ...HexAddress, description: 'a hint, honoured when page aligned and free' })
}, { additionalProperties: false })
export type MmapBody = Static<typeof MmapBody>

export const Mapping = Type.Object({
  addr: HexAddress,
  end: HexAddress,
  length: Type.Integer({ minimum: 0 }),
  prot: ProtString,
  shared: Type.Boolean(),
  file: Type.Optional(FileId),
  offset: Type.Integer({ minimum: 0, description: 'byte offset in the file' }),
  dontcopy: Type.Boolean(),
  residentPages: Type.Integer({ minimum: 0 })
}, { description: 'a mapping (vma)' })
export type Mapping = Static<typeof Mapping>

export const MappingList = Type.Object({ mappings: Type.Array(Mapping) }, { description: 'mappings, lowest address first' })
export type MappingList = Static<typeof MappingList>

export const MunmapQuery = Type.Object({
  length: Type.Optional({ ...Length, description: 'bytes to unmap from addr; without it, the whole mapping that starts at addr' })
}, { additionalProperties: false })

export const Unmapped = Type.Object({
  addr: HexAddress,
  length: Type.Integer({ minimum: 0, description: 'bytes unmapped' })
}, { description: 'what was unmapped' })

export const MprotectBody = Type.Object({
  length: Type.Optional({ ...Length, description: 'bytes from addr; without it, the whole mapping that starts at addr' }),
  prot: ProtIn
}, { additionalProperties: false })
export type MprotectBody = Static<typeof MprotectBody>
