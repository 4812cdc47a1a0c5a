/**
 * Prometheus metrics, one prom-client Registry per app (never the global one, so apps
 * built side by side in tests do not share series).
 *
 * Completions are seen as they happen by each device's completion observer, which is
 * on the path of every descriptor: it only bumps plain numbers in the series of the
 * port's (device, hardware queue, tenant), found through a WeakMap filled when the queue
 * is created; prom-client reads those numbers at scrape time (collect(), and the
 * latency histogram's get()). Everything the hardware already counts
 * (queue counters, IOTLB hits and misses, occupancy) is read at scrape time too.
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, Gauge, Registry } from 'prom-client'
import { Status, statusName } from './hw/descriptor.ts'
import type { HwQueue, QueuePort } from './hw/hw-queue.ts'
import type { Queue, Uacce } from './kernel/uacce.ts'
import type { Kernel } from './kernel/kernel.ts'
import type { InflightCounter } from './devices.ts'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
  }
}

/** Seconds: from a NOOP's tens of microseconds to a megabyte DEFLATE behind a full queue. */
const LATENCY_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

/** What the device completed for one (device, hardware queue, tenant). */
interface Series {
  labels: { device: string, queue: string, tenant: string }
  /** completions by status byte */
  byStatus: Float64Array
  bytes: number
  faults: number
  /** latency counts per LATENCY_BUCKETS bound (not cumulative), then past the last */
  latency: Float64Array
  latencySum: number
}

/** What the mediated path answered for one (device, tenant), by status byte. */
interface MediatedSeries {
  labels: { device: string, tenant: string }
  byStatus: Float64Array
}

type HwCounter = 'submitted' | 'completed' | 'retries' | 'disabled' | 'faults' | 'aborted'

const HW_COUNTERS: Array<[HwCounter, string]> = [
  ['submitted', 'descriptors the hardware queue accepted'],
  ['completed', 'descriptors the hardware queue completed'],
  ['retries', 'descriptors refused with RETRY: the queue was full'],
  ['disabled', 'descriptors refused with QUEUE_DISABLED: the queue was not running'],
  ['faults', 'faults counted against the queue (isolation), injected ones included'],
  ['aborted', 'descriptors completed ABORTED (reset, release, exit)']
]

/** A histogram's samples in prom-client's form: cumulative buckets (le first), +Inf, sum, count. */
function latencyValues (name: string, all: Iterable<Series>): Array<{ metricName: string, labels: Record<string, string | number>, value: number }> {
  const out: Array<{ metricName: string, labels: Record<string, string | number>, value: number }> = []
  for (const s of all) {
    let acc = 0
    for (let b = 0; b < LATENCY_BUCKETS.length; b++) {
      acc += s.latency[b]
      out.push({ metricName: `${name}_bucket`, labels: { le: LATENCY_BUCKETS[b], ...s.labels }, value: acc })
    }
    const count = acc + s.latency[LATENCY_BUCKETS.length]
    out.push({ metricName: `${name}_bucket`, labels: { le: '+Inf', ...s.labels }, value: count })
    out.push({ metricName: `${name}_sum`, labels: { ...s.labels }, value: s.latencySum })
    out.push({ metricName: `${name}_count`, labels: { ...s.labels }, value: count })
  }
  return out
}

function statusLabel (status: number): string {
  return statusName(status) ?? String(status)
}

export class Metrics {
  readonly registry = new Registry()
  readonly #uacce: Uacce
  /** by `device queue tenant`: kept for the life of the app, so counters never go back */
  readonly #series = new Map<string, Series>()
  readonly #ports = new WeakMap<QueuePort, Series>()
  readonly #mediated = new Map<string, MediatedSeries>()
  readonly #ebusy: Counter<'device' | 'tenant'>

  constructor (kernel: Kernel, uacce: Uacce, inflight: InflightCounter) {
    this.#uacce = uacce
    const registers = [this.registry]
    const series = this.#series
    const mediated = this.#mediated

    // eslint-disable-next-line no-new -- registered in the registry; collect() feeds it
    new Counter({
      name: 'warpd_descriptors_total',
      help: 'Descriptors the devices completed, by device, hardware queue, tenant and status',
      labelNames: ['device', 'queue', 'tenant', 'status'],
      registers,
      collect () {
        this.reset()
        for (const s of series.values()) {
          for (let st = 0; st < 256; st++) if (s.byStatus[st] > 0) this.inc({ ...s.labels, status: statusLabel(st) }, s.byStatus[st])
        }
      }
    })
    // eslint-disable-next-line no-new
    new Counter({
      name: 'warpd_descriptor_bytes_total',
      help: 'Bytes of source processed by completed descriptors',
      labelNames: ['device', 'queue', 'tenant'],
      registers,
      collect () {
        this.reset()
        for (const s of series.values()) this.inc(s.labels, s.bytes)
      }
    })
    // eslint-disable-next-line no-new
    new Counter({
      name: 'warpd_descriptor_faults_total',
      help: 'Descriptors the devices completed PAGE_FAULT',
      labelNames: ['device', 'queue', 'tenant'],
      registers,
      collect () {
        this.reset()
        for (const s of series.values()) this.inc(s.labels, s.faults)
      }
    })
    // eslint-disable-next-line no-new
    new Counter({
      name: 'warpd_mediated_descriptors_total',
      help: 'Descriptors answered on the kernel-mediated path, by status: those the kernel refused itself (a fault while pinning, an invalid field) as well as those the device completed',
      labelNames: ['device', 'tenant', 'status'],
      registers,
      collect () {
        this.reset()
        for (const s of mediated.values()) {
          for (let st = 0; st < 256; st++) if (s.byStatus[st] > 0) this.inc({ ...s.labels, status: statusLabel(st) }, s.byStatus[st])
        }
      }
    })
    // Fed from the series at scrape time, like the counters: prom-client's observe()
    // hashes the labels on every call, about 5% of the doorbell's main thread.
    const latencyName = 'warpd_descriptor_latency_seconds'
    const latencyHelp = 'From acceptance by the hardware queue to completion'
    this.registry.registerMetric({
      name: latencyName,
      help: latencyHelp,
      type: 'histogram',
      aggregator: 'sum',
      // the registry may reset its metrics; this one's numbers live in the series
      reset: () => {},
      get: async () => ({ name: latencyName, help: latencyHelp, type: 'histogram', aggregator: 'sum', values: latencyValues(latencyName, series.values()) })
    } as unknown as Parameters<Registry['registerMetric']>[0])
    this.#ebusy = new Counter({
      name: 'warpd_ebusy_total',
      help: 'Dedicated queue requests refused with EBUSY: no free hardware queue',
      labelNames: ['device', 'tenant'],
      registers
    })

    const devices = (): Array<{ id: string, queues: HwQueue[], iotlb: { hits: number, misses: number }, available: () => number }> =>
      [...uacce.devices.values()].map(d => ({
        id: d.dev.id,
        queues: d.dev.queues,
        iotlb: d.dev.iotlb,
        available: () => d.dev.attributes().available_instances
      }))

    for (const [key, help] of HW_COUNTERS) {
      // eslint-disable-next-line no-new
      new Counter({
        name: `warpd_hw_queue_${key}_total`,
        help: `Hardware queue counter: ${help}`,
        labelNames: ['device', 'queue'],
        registers,
        collect () {
          this.reset()
          for (const d of devices()) for (const q of d.queues) this.inc({ device: d.id, queue: String(q.index) }, q.counters[key])
        }
      })
    }
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'warpd_hw_queue_occupancy',
      help: 'Descriptors accepted and not yet completed, per hardware queue',
      labelNames: ['device', 'queue', 'mode'],
      registers,
      collect () {
        this.reset()
        for (const d of devices()) for (const q of d.queues) this.set({ device: d.id, queue: String(q.index), mode: q.mode }, q.occupancy)
      }
    })
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'warpd_hw_queue_state',
      help: 'Hardware queue state: 1 running, 2 isolated, 3 resetting, 4 released',
      labelNames: ['device', 'queue'],
      registers,
      collect () {
        this.reset()
        for (const d of devices()) for (const q of d.queues) this.set({ device: d.id, queue: String(q.index) }, q.state)
      }
    })
    // eslint-disable-next-line no-new
    new Counter({
      name: 'warpd_iotlb_hits_total',
      help: 'IOTLB lookups that hit, per device',
      labelNames: ['device'],
      registers,
      collect () {
        this.reset()
        for (const d of devices()) this.inc({ device: d.id }, d.iotlb.hits)
      }
    })
    // eslint-disable-next-line no-new
    new Counter({
      name: 'warpd_iotlb_misses_total',
      help: 'IOTLB lookups that missed (a page walk), per device',
      labelNames: ['device'],
      registers,
      collect () {
        this.reset()
        for (const d of devices()) this.inc({ device: d.id }, d.iotlb.misses)
      }
    })
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'warpd_device_available_instances',
      help: 'Free dedicated hardware queues (UACCE available_instances)',
      labelNames: ['device'],
      registers,
      collect () {
        this.reset()
        for (const d of devices()) this.set({ device: d.id }, d.available())
      }
    })
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'warpd_tenant_queues',
      help: 'Queues open, per tenant, device and kind',
      labelNames: ['tenant', 'device', 'kind'],
      registers,
      collect () {
        this.reset()
        for (const q of uacce.queues.values()) this.inc({ tenant: q.tenant, device: q.device.dev.id, kind: q.kind })
      }
    })
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'warpd_tenant_processes',
      help: 'Processes running, per tenant',
      labelNames: ['tenant'],
      registers,
      collect () {
        this.reset()
        for (const p of kernel.processes.values()) if (p.state === 'running') this.inc({ tenant: p.tenant })
      }
    })
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'warpd_tenant_inflight_descriptors',
      help: 'Descriptors of mediated submissions in flight, per tenant (what the inflight quota counts)',
      labelNames: ['tenant'],
      registers,
      collect () {
        this.reset()
        const tenants = new Set<string>()
        for (const q of uacce.queues.values()) tenants.add(q.tenant)
        for (const t of tenants) this.set({ tenant: t }, inflight.get(t))
      }
    })

    for (const d of uacce.devices.values()) {
      const id = d.dev.id
      // a doorbell's completions arrive in runs of one port: one WeakMap lookup per run
      let lastPort: QueuePort | undefined
      let last: Series | undefined
      d.dev.observer = (queue, port, status, _opcode, bytes, latencyNs) => {
        const s = port === lastPort && last !== undefined ? last : this.#ports.get(port) ?? this.#lookup(id, queue, port)
        lastPort = port
        last = s
        s.byStatus[status]++
        s.bytes += bytes
        if (status === Status.PAGE_FAULT) s.faults++
        const secs = latencyNs / 1e9
        let b = 0
        while (b < LATENCY_BUCKETS.length && secs > LATENCY_BUCKETS[b]) b++
        s.latency[b]++
        s.latencySum += secs
      }
    }
  }

  /** Remembers whose ports a queue has, so its completions are counted for its tenant. */
  trackQueue (q: Queue): void {
    if (q.port !== undefined) this.#ports.set(q.port, this.#seriesOf(q.device.dev.id, q.port.queue, q.tenant))
    for (const port of q.kernelPorts) this.#ports.set(port, this.#seriesOf(q.device.dev.id, port.queue, q.tenant))
  }

  /** The completions a mediated submission answered: `recordSize`-byte records, the status byte first. */
  countMediated (device: string, tenant: string, completions: Uint8Array, recordSize: number): void {
    const key = `${device} ${tenant}`
    let s = this.#mediated.get(key)
    if (s === undefined) {
      s = { labels: { device, tenant }, byStatus: new Float64Array(256) }
      this.#mediated.set(key, s)
    }
    for (let at = 0; at < completions.length; at += recordSize) s.byStatus[completions[at]]++
  }

  countEbusy (device: string, tenant: string): void {
    this.#ebusy.inc({ device, tenant })
  }

  #seriesOf (device: string, hw: HwQueue, tenant: string): Series {
    const key = `${device} ${hw.index} ${tenant}`
    let s = this.#series.get(key)
    if (s === undefined) {
      s = { labels: { device, queue: String(hw.index), tenant }, byStatus: new Float64Array(256), bytes: 0, faults: 0, latency: new Float64Array(LATENCY_BUCKETS.length + 1), latencySum: 0 }
      this.#series.set(key, s)
    }
    return s
  }

  /** A port no queue was tracked for (created behind the API's back): found once, then cached. */
  #lookup (device: string, queue: HwQueue, port: QueuePort): Series {
    let tenant = 'unknown'
    for (const q of this.#uacce.queues.values()) {
      if (q.port === port || q.kernelPorts.includes(port)) tenant = q.tenant
    }
    const s = this.#seriesOf(device, queue, tenant)
    this.#ports.set(port, s)
    return s
  }
}

export const metricsPlugin = fp(async (fastify: FastifyInstance) => {
  fastify.decorate('metrics', new Metrics(fastify.kernel, fastify.uacce, fastify.inflight))
}, { name: 'warpd-metrics', dependencies: ['warpd-devices'] })
