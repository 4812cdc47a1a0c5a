/**
 * Builds the app for a test: a temporary state directory, a small physical memory, a
 * known admin token; torn down when the test ends. Requests go through inject().
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { buildApp, type AppOptions } from '../src/app.ts'
import { loadConfig, type Config } from '../src/config.ts'

export const ADMIN_TOKEN = 'test-admin-token-0123456789abcdef'
export const adminHeaders = { authorization: `Bearer ${ADMIN_TOKEN}` }

/** The subset of tap's Test this helper uses. */
interface TestLike {
  teardown: (fn: () => unknown) => void
}

/** A fresh state directory removed when the test ends. */
export function tempStateDir (t: TestLike): string {
  const dir = mkdtempSync(join(tmpdir(), 'warpd-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

export type BuildExtras = Pick<AppOptions, 'clock' | 'routes'>

export async function build (t: TestLike, overrides: Partial<Config> = {}, extras: BuildExtras = {}): Promise<FastifyInstance> {
  const env: Record<string, unknown> = {
    WARPD_STATE_DIR: overrides.WARPD_STATE_DIR ?? tempStateDir(t),
    WARPD_ADMIN_TOKEN: ADMIN_TOKEN,
    WARPD_PHYS_MEM_BYTES: 4 * 2 ** 20,
    WARPD_LOG_LEVEL: 'silent',
    ...overrides
  }
  // `WARPD_ADMIN_TOKEN: undefined` in overrides means: let the server generate one.
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k]
  const app = await buildApp({ config: loadConfig(env), ...extras })
  t.teardown(async () => await app.close())
  await app.ready()
  return app
}

export interface TestTenant {
  id: string
  token: string
  headers: { authorization: string }
}

export async function createTenant (app: FastifyInstance, quotas: Record<string, number> = {}, name?: string): Promise<TestTenant> {
  const res = await app.inject({
    method: 'POST',
    url: '/v1/admin/tenants',
    headers: adminHeaders,
    payload: { name: name ?? `tenant-${Math.random().toString(16).slice(2, 10)}`, quotas }
  })
  if (res.statusCode !== 201) throw new Error(`createTenant: ${res.statusCode} ${res.body}`)
  const body = res.json<{ id: string, token: string }>()
  return { id: body.id, token: body.token, headers: { authorization: `Bearer ${body.token}` } }
}

export async function createProcess (app: FastifyInstance, tenant: TestTenant): Promise<number> {
  const res = await app.inject({ method: 'POST', url: '/v1/processes', headers: tenant.headers })
  if (res.statusCode !== 201) throw new Error(`createProcess: ${res.statusCode} ${res.body}`)
  return res.json<{ pid: number }>().pid
}

export async function mmap (app: FastifyInstance, tenant: TestTenant, pid: number, body: Record<string, unknown>): Promise<string> {
  const res = await app.inject({ method: 'POST', url: `/v1/processes/${pid}/mappings`, headers: tenant.headers, payload: body })
  if (res.statusCode !== 201) throw new Error(`mmap: ${res.statusCode} ${res.body}`)
  return res.json<{ addr: string }>().addr
}

/** The problem body of an error response, after checking its content type. */
export function problem (res: LightMyRequestResponse): Record<string, unknown> & { code: string, status: number, detail: string } {
  const type = String(res.headers['content-type'])
  if (!type.startsWith('application/problem+json')) throw new Error(`not a problem: ${type} ${res.body}`)
  return res.json()
}
