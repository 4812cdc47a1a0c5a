import { Type, type Static } from '@sinclair/typebox'

export const FileId = Type.String({ pattern: '^file-[0-9]{1,15}$', description: 'file id', examples: ['file-1'] })

export const FileParams = Type.Object({ id: FileId })
export type FileParams = Static<typeof FileParams>

export const FileCreateBody = Type.Object({
  size: Type.Optional(Type.Integer({ minimum: 0, default: 0, description: 'initial size in bytes (reads as zeros)' }))
}, { additionalProperties: false })

export const FileView = Type.Object({
  id: FileId,
  size: Type.Integer({ minimum: 0 }),
  cachedPages: Type.Integer({ minimum: 0, description: 'pages in the page cache' }),
  dirtyPages: Type.Integer({ minimum: 0, description: 'cached pages not yet written back' }),
  pagesWrittenBack: Type.Integer({ minimum: 0 }),
  mapCount: Type.Integer({ minimum: 0, description: 'address spaces mapping it' })
}, { description: 'a file' })
export type FileView = Static<typeof FileView>

export const FileList = Type.Object({ files: Type.Array(FileView) }, { description: 'the tenant\'s files' })

export const FileWriteQuery = Type.Object({
  offset: Type.Optional(Type.Integer({ minimum: 0, default: 0 }))
}, { additionalProperties: false })

export const FileReadQuery = Type.Object({
  offset: Type.Optional(Type.Integer({ minimum: 0, default: 0 })),
  length: Type.Optional(Type.Integer({ minimum: 0, description: 'bytes; without it, up to the end of the file' }))
}, { additionalProperties: false })

export const FileWritten = Type.Object({
  written: Type.Integer({ minimum: 0 }),
  size: Type.Integer({ minimum: 0, description: 'the file size after the write' })
}, { description: 'the write completed' })

export const Fsynced = Type.Object({
  pagesWritten: Type.Integer({ minimum: 0 })
}, { description: 'the dirty pages were written back' })
