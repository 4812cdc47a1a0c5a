import { Type } from '@sinclair/typebox'

export const Health = Type.Object({ status: Type.Literal('ok') }, { description: 'alive' })
export const Ready = Type.Object({ status: Type.Literal('ready') }, { description: 'ready for traffic' })
