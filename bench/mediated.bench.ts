/**
 * Issue 4's benchmark: mediated submissions per second (POST /v1/queues/{qid}/submit on
 * a sync_only queue of wd1, octet-stream in and out), with 1 NOOP and with 32 NOOPs per
 * request, against a bare fastify POST route that takes the same octet-stream body and
 * answers as many bytes (N x 32) without doing anything. Both listen on 127.0.0.1; the
 * load comes from a worker thread (`http-load.ts`) at the same concurrency, and the two
 * run in alternating rounds.
 *
 * The ratio is what the mediated path costs on top of an HTTP request: auth, the route,
 * the kernel (validate, queue on a kernel hardware queue, wait), the device and an engine
 * round trip through the shared-memory rings, and the answer.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import { buildApp } from '../src/app.ts'
import { loadConfig } from '../src/config.ts'
import { DESC_SIZE, Opcode, makeDescriptor, writeDescriptor } from '../src/hw/descriptor.ts'
import { fmt, paired } from './harness.ts'
import { httpLoad } from './http-load.ts'

const CONCURRENCY = 16
const SECONDS = 1
const ROUNDS = 7
const ADMIN = 'bench-admin-token-0123456789abcdef'

async function load (port: number, path: string, headers: Record<string, string>, body: Buffer): Promise<number> {
  return await httpLoad({ port, path, headers, body, answerBytes: body.length / 2, seconds: SECONDS, concurrency: CONCURRENCY })
}

function noops (n: number): Buffer {
  const b = Buffer.alloc(n * DESC_SIZE)
  for (let i = 0; i < n; i++) writeDescriptor(b, i * DESC_SIZE, makeDescriptor({ opcode: Opcode.NOOP, tag: BigInt(i) }))
  return b
}

export async function benchMediated (): Promise<string[]> {
  const out: string[] = []
  const stateDir = await mkdtemp(join(tmpdir(), 'warpd-bench-'))
  const config = loadConfig({
    WARPD_STATE_DIR: stateDir,
    WARPD_ADMIN_TOKEN: ADMIN,
    WARPD_PHYS_MEM_BYTES: 16 * 2 ** 20,
    // The per-tenant request rate would be the bottleneck otherwise.
    WARPD_RATE_LIMIT: 1_000_000_000,
    // set to compare: 0 turns the engines' polling off
    WARPD_ENGINE_POLL_US: process.env.WARPD_ENGINE_POLL_US
  })
  const app = await buildApp({ config })
  const bare = Fastify({ logger: false })
  bare.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) => { done(null, body) })
  bare.post('/submit', async (request, reply) => {
    const body = request.body as Buffer
    return await reply.type('application/octet-stream').send(Buffer.alloc(body.length / 2))
  })
  try {
    await app.listen({ host: '127.0.0.1', port: 0 })
    await app.lifecycle.settled
    await bare.listen({ host: '127.0.0.1', port: 0 })
    const appPort = (app.server.address() as { port: number }).port
    const barePort = (bare.server.address() as { port: number }).port

    const tenant = await app.inject({ method: 'POST', url: '/v1/admin/tenants', headers: { authorization: `Bearer ${ADMIN}` }, payload: { name: 'bench' } })
    const auth = { authorization: `Bearer ${tenant.json<{ token: string }>().token}` }
    const pid = (await app.inject({ method: 'POST', url: '/v1/processes', headers: auth })).json<{ pid: number }>().pid
    const qid = (await app.inject({ method: 'POST', url: '/v1/devices/wd1/queues', headers: auth, payload: { pid } })).json<{ qid: string }>().qid
    const headers = { ...auth, 'content-type': 'application/octet-stream' }

    for (const n of [1, 32]) {
      const body = noops(n)
      // Warm both paths (JIT, sockets) before measuring.
      await load(appPort, `/v1/queues/${qid}/submit`, headers, body)
      await load(barePort, '/submit', { 'content-type': 'application/octet-stream' }, body)
      const r = await paired(ROUNDS, async () => [
        await load(appPort, `/v1/queues/${qid}/submit`, headers, body),
        await load(barePort, '/submit', { 'content-type': 'application/octet-stream' }, body)
      ])
      out.push(`| mediated submit, ${n} NOOP${n > 1 ? 's' : ''} a request, ${CONCURRENCY} in flight, keep-alive | ${fmt(r.num)} req/s (${fmt(r.num * n)} descriptors/s); bare fastify POST ${fmt(r.den)} req/s | ${(r.ratio * 100).toFixed(0)}% of the bare route |`)
    }
  } finally {
    await bare.close()
    await app.close()
    await rm(stateDir, { recursive: true, force: true })
  }
  return out
}
