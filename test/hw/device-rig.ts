/** A device on a small machine, one bound process, and a port that collects completions. */
import { AccelDevice } from '../../src/hw/accel-device.ts'
import { DEFAULT_DEVICES, type DeviceConfig } from '../../src/hw/device-config.ts'
import { DESC_SIZE, makeDescriptor, readCompletion, writeDescriptor, type Completion, type Descriptor } from '../../src/hw/descriptor.ts'
import type { HwQueue, QueuePort, QueueState } from '../../src/hw/hw-queue.ts'
import { Kernel } from '../../src/kernel/kernel.ts'
import type { Process } from '../../src/kernel/process.ts'
import { Prot } from '../../src/kernel/vma.ts'

export const P = 4096

export interface Collector {
  port: QueuePort
  completions: Map<bigint, Completion[]>
  statuses: Array<[QueueState, string]>
  count: number
  waitFor: (n: number, timeoutMs?: number) => Promise<void>
}

export function deviceConfig (over: Partial<DeviceConfig> = {}): DeviceConfig {
  return { ...structuredClone(DEFAULT_DEVICES[0]), engines: 1, ...over }
}

export class Rig {
  readonly kernel: Kernel
  readonly dev: AccelDevice
  readonly p: Process
  readonly pasid: number

  constructor (config: DeviceConfig = deviceConfig(), pages = 8192, pool: { pollContended?: boolean } = {}) {
    this.kernel = new Kernel({ physMemBytes: pages * P })
    this.dev = new AccelDevice(config, this.kernel.iommu, pool)
    this.p = this.kernel.createProcess('t')
    const r = this.kernel.bindPasid(this.p)
    if (!r.ok) throw new Error(r.message)
    this.pasid = r.value
  }

  map (length: number, prot: number = Prot.READ | Prot.WRITE, proc: Process = this.p): number {
    const r = proc.mm.mmap({ length, prot, shared: false })
    if (!r.ok) throw new Error(r.message)
    return r.value
  }

  store (addr: number, data: Uint8Array, proc: Process = this.p): void {
    const r = proc.mm.store(addr, data)
    if (!r.ok) throw new Error(r.message)
  }

  load (addr: number, len: number, proc: Process = this.p): Uint8Array {
    const r = proc.mm.load(addr, len)
    if (!r.ok) throw new Error(r.message)
    return r.value
  }

  collector (q: HwQueue, pasid = this.pasid, weight = 1): Collector {
    const completions = new Map<bigint, Completion[]>()
    const statuses: Array<[QueueState, string]> = []
    let waiters: Array<() => void> = []
    const c: Collector = {
      port: undefined as unknown as QueuePort,
      completions,
      statuses,
      count: 0,
      waitFor: async (n, timeoutMs = 20000) => {
        const deadline = Date.now() + timeoutMs
        while (c.count < n) {
          if (Date.now() > deadline) throw new Error(`waited for ${n} completions, have ${c.count}`)
          await new Promise<void>(resolve => {
            waiters.push(resolve)
            setTimeout(resolve, 50)
          })
        }
      }
    }
    c.port = q.attach(pasid, pasid, {
      completion: (rec: Uint8Array) => {
        const cr = readCompletion(rec)
        const list = completions.get(cr.tag)
        if (list === undefined) completions.set(cr.tag, [cr])
        else list.push(cr)
        c.count++
        const w = waiters
        waiters = []
        for (const f of w) f()
      },
      status: (s, reason) => { statuses.push([s, reason]) }
    }, weight)
    return c
  }

  async close (): Promise<void> {
    await this.dev.close()
  }
}

export function encode (descs: Array<Partial<Descriptor> & { opcode: number }>): Uint8Array {
  const buf = new Uint8Array(descs.length * DESC_SIZE)
  descs.forEach((d, i) => writeDescriptor(buf, i * DESC_SIZE, makeDescriptor(d)))
  return buf
}

/** Submits and waits for exactly one completion per accepted descriptor; answers them by tag. */
export async function run (c: Collector, descs: Array<Partial<Descriptor> & { opcode: number }>): Promise<Completion[]> {
  const before = c.count
  const n = c.port.submit(encode(descs), 0, descs.length)
  if (n !== descs.length) throw new Error(`accepted ${n} of ${descs.length}`)
  await c.waitFor(before + n)
  return descs.map(d => {
    const list = c.completions.get(d.tag ?? 0n)
    if (list === undefined || list.length === 0) throw new Error(`no completion for tag ${d.tag}`)
    return list.shift() as Completion
  })
}
