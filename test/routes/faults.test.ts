import t from 'tap'
import { build, createProcess, createTenant } from '../helper.ts'

t.test('the fault queue of a process, addresses in hex', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const empty = await app.inject({ method: 'GET', url: `/v1/processes/${pid}/faults`, headers: a.headers })
  t.same(empty.json(), { total: 0, faults: [] })

  const p = app.kernel.getProcess(pid)
  if (p === undefined) throw new Error('no process')
  const at = Date.UTC(2026, 0, 1)
  p.mm.reportFault({ pasid: 3, addr: 0x7f0000001000, write: true, reason: 'permission', at })
  p.mm.reportFault({ pasid: 3, addr: 0x1000, write: false, reason: 'not_present', served: true, device: 'sva0', at })
  // what a descriptor may name: past the user range, and past what a number holds
  p.mm.reportFault({ pasid: 3, addr: 2 ** 50, write: false, reason: 'no_mapping', at })
  p.mm.reportFault({ pasid: 3, addr: 0xfedcba9876543210n, write: true, reason: 'no_mapping', at })
  const res = await app.inject({ method: 'GET', url: `/v1/processes/${pid}/faults`, headers: a.headers })
  t.equal(res.statusCode, 200)
  t.same(res.json(), {
    total: 4,
    faults: [
      { pasid: 3, addr: '0x7f0000001000', write: true, reason: 'permission', at: '2026-01-01T00:00:00.000Z' },
      { pasid: 3, addr: '0x1000', write: false, reason: 'not_present', served: true, device: 'sva0', at: '2026-01-01T00:00:00.000Z' },
      { pasid: 3, addr: '0x4000000000000', write: false, reason: 'no_mapping', at: '2026-01-01T00:00:00.000Z' },
      { pasid: 3, addr: '0xfedcba9876543210', write: true, reason: 'no_mapping', at: '2026-01-01T00:00:00.000Z' }
    ]
  })
})
