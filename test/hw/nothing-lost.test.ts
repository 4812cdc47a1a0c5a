import t from 'tap'
import { Flag, Opcode, Status, readCompletion } from '../../src/hw/descriptor.ts'
import type { CompletionCallback, HwQueue, QueuePort } from '../../src/hw/hw-queue.ts'
import { P, Rig, deviceConfig, encode } from './device-rig.ts'

/**
 * DESIGN.md invariant 5: many thousands of descriptors across queues, with resets,
 * isolations and queue releases in between. Every accepted descriptor is answered exactly
 * once (counted by tag through a per-descriptor callback, which is called even after its
 * port closed); every refused one is answered at once.
 */
t.test('every accepted descriptor gets exactly one completion', async t => {
  const rig = new Rig(deviceConfig({
    engines: 2,
    queues: [
      { mode: 'dedicated', depth: 32, priority: 1 },
      { mode: 'dedicated', depth: 32, priority: 2 },
      { mode: 'shared', depth: 64, priority: 3 }
    ],
    isolateStrategy: { faults: 20, windowMs: 1000 }
  }))
  t.teardown(() => rig.close())
  await rig.dev.pool.ready()
  const buf = rig.map(64 * P)
  rig.store(buf, new Uint8Array(64 * P))
  const seen = new Map<bigint, number>()
  const statuses = new Map<number, number>()
  let accepted = 0
  let refused = 0
  let nextTag = 1n
  let badRefusals = 0
  const cb: CompletionCallback = (rec) => {
    const c = readCompletion(rec)
    seen.set(c.tag, (seen.get(c.tag) ?? 0) + 1)
    statuses.set(c.status, (statuses.get(c.status) ?? 0) + 1)
  }
  const shared = rig.dev.sharedQueue() as HwQueue
  const ports: QueuePort[] = []
  const dedicated: Array<HwQueue | undefined> = [rig.dev.allocQueue('dedicated'), rig.dev.allocQueue('dedicated')]
  for (const q of dedicated) if (q !== undefined) ports.push(q.attach(rig.pasid, rig.pasid, { completion: () => {} }))
  for (let i = 0; i < 3; i++) ports.push(shared.attach(rig.pasid, rig.pasid, { completion: () => {} }, i + 1))
  let seed = 12345
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) >>> 0
    return (seed >>> 16) % n
  }
  const kinds = [
    () => ({ opcode: Opcode.NOOP }),
    () => ({ opcode: Opcode.MEMMOVE, src: buf, dst: buf + 32 * P, size: 64 }),
    () => ({ opcode: Opcode.SHA256, src: buf, dst: buf + 40 * P, size: 16 * P }),
    () => ({ opcode: Opcode.CRC32, src: rnd(3) === 0 ? 0x1000 : buf, size: 64 }),
    () => ({ opcode: Opcode.MEMMOVE, flags: Flag.FENCE, src: buf, dst: buf + 48 * P, size: 4 * P }),
    () => ({ opcode: Opcode.DRAIN })
  ]
  // bounded in count and time: enough rounds for several thousand accepted descriptors
  const deadline = Date.now() + 60000
  for (let r = 0; r < 4000 && (accepted < 8000 || r < 200) && Date.now() < deadline; r++) {
    for (let pi = 0; pi < ports.length; pi++) {
      const n = 1 + rnd(24)
      const descs = Array.from({ length: n }, () => ({ ...kinds[rnd(kinds.length)](), tag: nextTag++ }))
      const a = ports[pi].submit(encode(descs), 0, n, Array(n).fill(cb))
      accepted += a
      refused += n - a
      if (a < n && ports[pi].lastRefusal !== Status.RETRY && ports[pi].lastRefusal !== Status.QUEUE_DISABLED) badRefusals++
    }
    const event = rnd(40)
    if (event === 0) rig.dev.reset()
    else if (event < 8) for (const q of rig.dev.queues) rig.dev.clearIsolation(q)
    else if (event === 2) {
      const i = rnd(2)
      const q = dedicated[i]
      if (q !== undefined) {
        rig.dev.releaseQueue(q)
        const again = rig.dev.allocQueue('dedicated')
        dedicated[i] = again
        if (again !== undefined) ports[i] = again.attach(rig.pasid, rig.pasid, { completion: () => {} })
      }
    }
    await new Promise(resolve => setImmediate(resolve))
  }
  for (const q of rig.dev.queues) rig.dev.clearIsolation(q)
  await rig.dev.drain()
  await new Promise(resolve => setTimeout(resolve, 20))
  let total = 0
  let twice = 0
  for (const n of seen.values()) {
    total += n
    if (n !== 1) twice++
  }
  t.ok(accepted > 5000, `${accepted} accepted, ${refused} refused at once`)
  t.equal(total, accepted, 'one completion per accepted descriptor')
  t.equal(seen.size, accepted, 'and each for a different descriptor')
  t.equal(twice, 0)
  t.equal(badRefusals, 0, 'a refusal is RETRY or QUEUE_DISABLED')
  t.equal(rig.dev.outstanding, 0)
  t.equal(rig.kernel.iommu.accessesInFlight(), 0, 'no device access left holding frames')
  t.ok((statuses.get(Status.ABORTED) ?? 0) > 0, 'resets and releases aborted some')
  t.ok((statuses.get(Status.PAGE_FAULT) ?? 0) > 0)
  t.ok((statuses.get(Status.SUCCESS) ?? 0) > 0)
})
