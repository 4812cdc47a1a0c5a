/**
 * The devices: read from WARPD_DEVICES_FILE (or the built-in default), handed to the
 * accelerator subsystem (src/kernel/uacce.ts) over the app's kernel, and decorated as
 * `fastify.uacce`. Also the per-process bindings the REST API shows and the per-tenant
 * count of descriptors in flight that the in-flight quota checks.
 *
 * Start-up: the engines (worker threads) start in the background; /readyz answers
 * 'starting' until every device's engines are up. Shutdown drains: the devices stop
 * accepting and finish everything accepted first, only then do the processes exit
 * (an exit releases queues, which would abort their work).
 */
import { readFile } from 'node:fs/promises'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Value } from '@sinclair/typebox/value'
import { cpuLimit } from './cgroup.ts'
import { DEFAULT_DEVICES, DevicesFileSchema, type DeviceConfig } from './hw/device-config.ts'
import type { Process } from './kernel/process.ts'
import { Uacce } from './kernel/uacce.ts'

declare module 'fastify' {
  interface FastifyInstance {
    uacce: Uacce
    bindings: Bindings
    inflight: InflightCounter
  }
}

export interface DevicesOptions {
  /** devices given in code (tests); otherwise the file, otherwise DEFAULT_DEVICES */
  devices?: DeviceConfig[]
  /** the CPUs a cgroup quota allows (tests); otherwise read from the process's cgroup */
  cpuLimit?: number
}

/**
 * Under a CPU quota of less than this many CPUs the engines do not poll unless told to
 * (WARPD_ENGINE_POLL_US): a polling engine and the main thread need a CPU each, and the
 * poll would spend quota the main thread then waits for.
 */
export const POLL_MIN_CPUS = 2

export class DevicesFileError extends Error {
  readonly file: string

  constructor (file: string, message: string) {
    super(`WARPD_DEVICES_FILE ${file}: ${message}`)
    this.name = 'DevicesFileError'
    this.file = file
  }
}

/**
 * Reads and validates a devices file (`{ "devices": [...] }`, DevicesFileSchema); fields
 * left out take the schema's defaults. Errors name the file and the bad path.
 */
export async function loadDevicesFile (file: string): Promise<DeviceConfig[]> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (e) {
    throw new DevicesFileError(file, `cannot read it: ${(e as Error).message}`)
  }
  let data: unknown
  try {
    data = JSON.parse(text)
  } catch (e) {
    throw new DevicesFileError(file, `not JSON: ${(e as Error).message}`)
  }
  // Defaults first, so a file may leave out what the schema defaults (depth, engines...).
  const filled = Value.Default(DevicesFileSchema, structuredClone(data))
  if (!Value.Check(DevicesFileSchema, filled)) {
    const first = Value.Errors(DevicesFileSchema, filled).First()
    const path = first?.path === undefined || first.path === '' ? '/' : first.path
    throw new DevicesFileError(file, `${path}: ${first?.message ?? 'invalid'}`)
  }
  const seen = new Set<string>()
  for (const [i, d] of filled.devices.entries()) {
    if (seen.has(d.id)) throw new DevicesFileError(file, `/devices/${i}/id: device id ${d.id} appears twice`)
    seen.add(d.id)
  }
  return filled.devices
}

/**
 * Which devices each process is bound to. The kernel keeps one PASID per address space
 * (bindPasid is idempotent); the API shows a binding per (process, device), so that
 * unbinding one device cannot pull the PASID from under the queues of another. Keyed by
 * the Process object: a fork child (a new Process) starts with none, and an exited
 * process's entry goes with it.
 */
export class Bindings {
  readonly #byProcess = new WeakMap<Process, Set<string>>()

  add (p: Process, device: string): void {
    let set = this.#byProcess.get(p)
    if (set === undefined) {
      set = new Set()
      this.#byProcess.set(p, set)
    }
    set.add(device)
  }

  has (p: Process, device: string): boolean {
    return this.#byProcess.get(p)?.has(device) ?? false
  }

  list (p: Process): string[] {
    return [...(this.#byProcess.get(p) ?? [])]
  }

  /** Answers how many bindings the process has left. */
  delete (p: Process, device: string): number {
    const set = this.#byProcess.get(p)
    if (set === undefined) return 0
    set.delete(device)
    return set.size
  }
}

/** Descriptors in flight per tenant on the mediated path: what the in-flight quota counts. */
export class InflightCounter {
  readonly #byTenant = new Map<string, number>()

  get (tenant: string): number {
    return this.#byTenant.get(tenant) ?? 0
  }

  add (tenant: string, n: number): void {
    this.#byTenant.set(tenant, this.get(tenant) + n)
  }

  sub (tenant: string, n: number): void {
    const left = this.get(tenant) - n
    if (left > 0) this.#byTenant.set(tenant, left)
    else this.#byTenant.delete(tenant)
  }
}

export const devicesPlugin = fp(async (fastify: FastifyInstance, opts: DevicesOptions) => {
  const file = fastify.config.WARPD_DEVICES_FILE
  const listed = opts.devices ?? (file === undefined ? structuredClone(DEFAULT_DEVICES) : await loadDevicesFile(file))
  let pollUs = fastify.config.WARPD_ENGINE_POLL_US
  const quota = 'cpuLimit' in opts ? opts.cpuLimit : cpuLimit()
  if (pollUs === undefined && quota !== undefined && quota < POLL_MIN_CPUS && listed.some(c => c.pollUs > 0)) {
    pollUs = 0
    fastify.log.warn({ cpuLimit: quota }, `a CPU quota of ${quota} CPUs: engine polling is off (WARPD_ENGINE_POLL_US overrides; README, "Engine polling")`)
  }
  const configs = pollUs === undefined ? listed : listed.map(c => ({ ...c, pollUs }))
  const uacce = new Uacce(fastify.kernel, configs)
  fastify.decorate('uacce', uacce)
  fastify.decorate('bindings', new Bindings())
  fastify.decorate('inflight', new InflightCounter())
  // Not awaited here: the service listens (liveness) while the engines start (readiness).
  const engines = Promise.all([...uacce.devices.values()].map(async d => await d.dev.pool.ready()))
  // Handled here too: a start that fails later (another plugin) closes the engines while
  // they start, and then no onReady ever looks at this promise.
  engines.catch(() => {})
  fastify.lifecycle.gates.push(engines)
  fastify.log.info({ devices: configs.map(c => ({ id: c.id, sva: c.sva, queues: c.queues.length, engines: c.engines, pollUs: c.pollUs })), file }, 'devices configured')

  fastify.addHook('onClose', async (instance) => {
    // Drain first: the devices stop accepting and complete everything accepted...
    await uacce.close()
    // ...then the processes exit (their queues are released, nothing is left to abort).
    for (const p of [...instance.kernel.processes.values()]) instance.kernel.exit(p)
  })
}, { name: 'warpd-devices', dependencies: ['warpd-kernel'] })
