/**
 * Prometheus metrics (src/metrics.ts), outside auth like /healthz: what a scraper reads.
 * Labels carry tenant ids, never names or tokens.
 */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { problems } from '../src/schemas/common.ts'

const MetricsText = {
  description: 'the metrics in the Prometheus text format (0.0.4)',
  content: { 'text/plain': { schema: Type.String() } }
}

const metricsRoutes: FastifyPluginAsync = async (instance: FastifyInstance) => {
  const fastify = instance.withTypeProvider<TypeBoxTypeProvider>()
  const { registry } = fastify.metrics

  fastify.get('/metrics', {
    schema: {
      tags: ['metrics'],
      summary: 'Prometheus metrics: descriptors by status, bytes, latency, faults, IOTLB, EBUSY, RETRY, queues and processes per tenant',
      response: { 200: MetricsText, ...problems(500) }
    }
  }, async (_request, reply) => {
    const text = await registry.metrics()
    return await reply.type(registry.contentType).send(text)
  })
}

export default metricsRoutes
