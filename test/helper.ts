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
import { DEFAULT_DEVICES, type DeviceConfig } from '../src/hw/device-config.ts'
import { DESC_SIZE, makeDescriptor, writeDescriptor, type Descriptor } from '../src/hw/descriptor.ts'

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

export type BuildExtras = Pick<AppOptions, 'clock' | 'routes' | 'devices' | 'cpuLimit'>

/**
 * The built-in devices with one engine thread each: an engine thread takes a few hundred
 * milliseconds to start under tsx, and most route tests never reach one.
 */
export function testDevices (): DeviceConfig[] {
  return structuredClone(DEFAULT_DEVICES).map(d => ({ ...d, engines: 1 }))
}

/**
 * Builds the app and waits until it is ready (the devices' engines started). Devices:
 * `extras.devices`, else WARPD_DEVICES_FILE when the overrides set it, else testDevices().
 */
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
  const devices = extras.devices ?? (overrides.WARPD_DEVICES_FILE === undefined ? testDevices() : undefined)
  // no CPU quota unless a test gives one: the machine's own cgroup must not change what tests see
  const app = await buildApp({ config: loadConfig(env), cpuLimit: undefined, ...extras, devices })
  t.teardown(async () => await app.close())
  await app.ready()
  await app.lifecycle.settled
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

export const OCTET = 'application/octet-stream'

/** Creates a queue on `device` for `pid`; answers the queue view. */
export async function createQueue (app: FastifyInstance, tenant: TestTenant, device: string, body: Record<string, unknown>): Promise<{ qid: string, pasid?: number, hwQueue?: number, kind: string }> {
  const res = await app.inject({ method: 'POST', url: `/v1/devices/${device}/queues`, headers: tenant.headers, payload: body })
  if (res.statusCode !== 201) throw new Error(`createQueue: ${res.statusCode} ${res.body}`)
  return res.json()
}

/** CPU store of `data` at `addr` in the process. */
export async function store (app: FastifyInstance, tenant: TestTenant, pid: number, addr: string | number, data: Uint8Array): Promise<void> {
  const at = typeof addr === 'number' ? `0x${addr.toString(16)}` : addr
  const res = await app.inject({ method: 'PUT', url: `/v1/processes/${pid}/memory/${at}`, headers: { ...tenant.headers, 'content-type': OCTET }, payload: Buffer.from(data) })
  if (res.statusCode !== 200) throw new Error(`store: ${res.statusCode} ${res.body}`)
}

/** CPU load of `length` bytes at `addr` in the process. */
export async function load (app: FastifyInstance, tenant: TestTenant, pid: number, addr: string | number, length: number): Promise<Buffer> {
  const at = typeof addr === 'number' ? `0x${addr.toString(16)}` : addr
  const res = await app.inject({ method: 'GET', url: `/v1/processes/${pid}/memory/${at}?length=${length}`, headers: tenant.headers })
  if (res.statusCode !== 200) throw new Error(`load: ${res.statusCode} ${res.body}`)
  return res.rawPayload
}

/** N descriptors as N x 64 bytes. */
export function encodeDescriptors (descs: Array<Partial<Descriptor> & { opcode: number }>): Buffer {
  const buf = Buffer.alloc(descs.length * DESC_SIZE)
  descs.forEach((d, i) => writeDescriptor(buf, i * DESC_SIZE, makeDescriptor(d)))
  return buf
}

/** Waits (bounded) for a condition that the event loop will make true; throws after `ms`. */
export async function waitFor (cond: () => boolean, what: string, ms = 20000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise(resolve => setImmediate(resolve))
  }
}
