/** Liveness and readiness, outside auth: what a load balancer and an orchestrator probe. */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Errors } from '../src/errors.ts'
import { problems } from '../src/schemas/common.ts'
import { Health, Ready } from '../src/schemas/health.ts'

const healthRoutes: FastifyPluginAsync = async (instance: FastifyInstance) => {
  const fastify = instance.withTypeProvider<TypeBoxTypeProvider>()

  fastify.get('/healthz', {
    schema: {
      tags: ['health'],
      summary: 'Liveness: the process answers',
      response: { 200: Health }
    }
  }, async () => ({ status: 'ok' as const }))

  fastify.get('/readyz', {
    schema: {
      tags: ['health'],
      summary: 'Readiness: 200 once started, 503 while starting or closing',
      response: { 200: Ready, ...problems(503) }
    }
  }, async () => {
    const { state } = fastify.lifecycle
    if (state !== 'ready') throw new Errors.Unavailable(`the server is ${state}`)
    return { status: 'ready' as const }
  })
}

export default healthRoutes
