import t from 'tap'
import { build, createProcess, createTenant, mmap, problem } from '../helper.ts'

t.test('mmap: defaults, protection forms and the listing', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const res = await app.inject({ method: 'POST', url: `/v1/processes/${pid}/mappings`, headers: a.headers, payload: { length: 5000, prot: 'rw' } })
  t.equal(res.statusCode, 201)
  const m = res.json()
  t.match(m, { addr: /^0x[0-9a-f]+$/, length: 8192, prot: 'rw', shared: false, offset: 0, dontcopy: false, residentPages: 0 })
  t.equal(Number(m.end) - Number(m.addr), 8192)
  t.notOk('file' in m)

  const forms: Array<[unknown, string]> = [['r', 'r'], ['none', 'none'], ['w', 'w'], [['read'], 'r'], [['read', 'write'], 'rw'], [[], 'none']]
  for (const [prot, want] of forms) {
    const r = await app.inject({ method: 'POST', url: `/v1/processes/${pid}/mappings`, headers: a.headers, payload: { length: 4096, prot } })
    t.equal(r.statusCode, 201, JSON.stringify(prot))
    t.equal(r.json().prot, want, JSON.stringify(prot))
  }

  const list = await app.inject({ method: 'GET', url: `/v1/processes/${pid}/mappings`, headers: a.headers })
  t.equal(list.statusCode, 200)
  const all = list.json().mappings as Array<{ addr: string }>
  t.equal(all.length, 7)
  const addrs = all.map(x => Number(x.addr))
  t.same(addrs, [...addrs].sort((x, y) => x - y), 'lowest address first')
})

t.test('mmap honours a free hint and flags', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const r = await app.inject({
    method: 'POST',
    url: `/v1/processes/${pid}/mappings`,
    headers: a.headers,
    payload: { length: 4096, prot: ['read', 'write'], addr: '0x100000', shared: true, dontcopy: true }
  })
  t.equal(r.statusCode, 201)
  t.match(r.json(), { addr: '0x100000', shared: true, dontcopy: true })
})

t.test('mmap validation names the field', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ prot: 'rw' }, 'length'],
    [{ length: 0, prot: 'rw' }, 'length'],
    [{ length: 2 ** 48, prot: 'rw' }, 'length'],
    [{ length: 4096 }, 'prot'],
    [{ length: 4096, prot: 'rwx' }, 'prot'],
    [{ length: 4096, prot: 'rw', addr: '7f00' }, 'addr'],
    [{ length: 4096, prot: 'rw', addr: '0x1234567890abc' }, 'addr'],
    [{ length: 4096, prot: 'rw', offset: 100, file: 'file-1' }, 'offset'],
    [{ length: 4096, prot: 'rw', file: '../etc' }, 'file'],
    [{ length: 4096, prot: 'rw', dontCopy: true }, 'dontCopy']
  ]
  for (const [payload, field] of cases) {
    const r = await app.inject({ method: 'POST', url: `/v1/processes/${pid}/mappings`, headers: a.headers, payload })
    t.equal(r.statusCode, 400, JSON.stringify(payload))
    t.match(problem(r), { code: 'WD_ERR_VALIDATION', field, in: 'body' }, JSON.stringify(payload))
  }
})

t.test('the memory quota counts every process of the tenant', async t => {
  const app = await build(t)
  const a = await createTenant(app, { memoryBytes: 4 * 4096 })
  const p1 = await createProcess(app, a)
  const p2 = await createProcess(app, a)
  await mmap(app, a, p1, { length: 2 * 4096, prot: 'rw' })
  await mmap(app, a, p2, { length: 4096, prot: 'rw' })
  const over = await app.inject({ method: 'POST', url: `/v1/processes/${p2}/mappings`, headers: a.headers, payload: { length: 4097, prot: 'rw' } })
  t.equal(over.statusCode, 409)
  t.match(problem(over), { code: 'WD_ERR_QUOTA', status: 409, detail: /memory quota: 12288 bytes mapped \+ 8192 exceeds 16384/ })
  const fits = await app.inject({ method: 'POST', url: `/v1/processes/${p2}/mappings`, headers: a.headers, payload: { length: 4096, prot: 'rw' } })
  t.equal(fits.statusCode, 201)
  const b = await createTenant(app, { memoryBytes: 4 * 4096 })
  const q = await createProcess(app, b)
  await mmap(app, b, q, { length: 4 * 4096, prot: 'rw' })
  t.pass('another tenant has its own quota')
})

t.test('file mappings: own files only, shared writes reach the file', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const b = await createTenant(app)
  const file = (await app.inject({ method: 'POST', url: '/v1/files', headers: a.headers, payload: { size: 8192 } })).json().id
  const pid = await createProcess(app, a)
  const addr = await mmap(app, a, pid, { length: 8192, prot: 'rw', shared: true, file, offset: 4096 })
  const list = (await app.inject({ method: 'GET', url: `/v1/processes/${pid}/mappings`, headers: a.headers })).json()
  t.match(list.mappings[0], { file, offset: 4096, shared: true })

  await app.inject({ method: 'PUT', url: `/v1/processes/${pid}/memory/${addr}`, headers: { ...a.headers, 'content-type': 'application/octet-stream' }, payload: Buffer.from('via mmap') })
  const data = await app.inject({ method: 'GET', url: `/v1/files/${String(file)}/data?offset=4096&length=8`, headers: a.headers })
  t.equal(data.body, 'via mmap')

  const q = await createProcess(app, b)
  const other = await app.inject({ method: 'POST', url: `/v1/processes/${q}/mappings`, headers: b.headers, payload: { length: 4096, prot: 'r', file } })
  t.equal(other.statusCode, 404)
  t.match(problem(other), { code: 'WD_ERR_NOT_FOUND', detail: `file ${String(file)} not found` })
})

t.test('munmap: whole mapping, part, and errors', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const addr = await mmap(app, a, pid, { length: 4 * 4096, prot: 'rw' })
  const base = Number(addr)
  const hex = (n: number): string => `0x${n.toString(16)}`

  const part = await app.inject({ method: 'DELETE', url: `/v1/processes/${pid}/mappings/${hex(base + 4096)}?length=4096`, headers: a.headers })
  t.equal(part.statusCode, 200)
  t.same(part.json(), { addr: hex(base + 4096), length: 4096 })
  let list = (await app.inject({ method: 'GET', url: `/v1/processes/${pid}/mappings`, headers: a.headers })).json().mappings
  t.same(list.map((m: { addr: string, length: number }) => [m.addr, m.length]), [[addr, 4096], [hex(base + 8192), 8192]], 'split in two')

  const inside = await app.inject({ method: 'DELETE', url: `/v1/processes/${pid}/mappings/${hex(base + 12288)}`, headers: a.headers })
  t.equal(inside.statusCode, 404, 'no mapping starts there')
  t.match(problem(inside), { code: 'WD_ERR_NOT_FOUND', detail: /no mapping starts at/ })

  const misaligned = await app.inject({ method: 'DELETE', url: `/v1/processes/${pid}/mappings/${hex(base + 1)}?length=4096`, headers: a.headers })
  t.equal(misaligned.statusCode, 400)
  t.equal(problem(misaligned).code, 'EINVAL')

  const badQuery = await app.inject({ method: 'DELETE', url: `/v1/processes/${pid}/mappings/${addr}?length=0`, headers: a.headers })
  t.match(problem(badQuery), { status: 400, field: 'length', in: 'querystring' })
  const badAddr = await app.inject({ method: 'DELETE', url: `/v1/processes/${pid}/mappings/zzz`, headers: a.headers })
  t.match(problem(badAddr), { status: 400, field: 'addr', in: 'params' })

  const whole = await app.inject({ method: 'DELETE', url: `/v1/processes/${pid}/mappings/${hex(base + 8192)}`, headers: a.headers })
  t.same(whole.json(), { addr: hex(base + 8192), length: 8192 })
  list = (await app.inject({ method: 'GET', url: `/v1/processes/${pid}/mappings`, headers: a.headers })).json().mappings
  t.equal(list.length, 1)
  const show = (await app.inject({ method: 'GET', url: `/v1/processes/${pid}`, headers: a.headers })).json()
  t.equal(show.totalVm, 4096, 'the quota sees the unmapped bytes go')
})

t.test('mprotect: whole mapping or part; a store after it faults', async t => {
  const app = await build(t)
  const a = await createTenant(app)
  const pid = await createProcess(app, a)
  const addr = await mmap(app, a, pid, { length: 2 * 4096, prot: 'rw' })
  const second = `0x${(Number(addr) + 4096).toString(16)}`

  const part = await app.inject({ method: 'PATCH', url: `/v1/processes/${pid}/mappings/${second}`, headers: a.headers, payload: { length: 4096, prot: 'r' } })
  t.equal(part.statusCode, 200)
  t.match(part.json().mappings, [{ addr: second, length: 4096, prot: 'r' }])

  const whole = await app.inject({ method: 'PATCH', url: `/v1/processes/${pid}/mappings/${addr}`, headers: a.headers, payload: { prot: 'none' } })
  t.equal(whole.statusCode, 200)
  t.match(whole.json().mappings, [{ addr, length: 4096, prot: 'none' }], 'the mapping that starts at addr, as split')

  const store = await app.inject({ method: 'PUT', url: `/v1/processes/${pid}/memory/${second}`, headers: { ...a.headers, 'content-type': 'application/octet-stream' }, payload: Buffer.from('x') })
  t.equal(store.statusCode, 422)
  t.match(problem(store), { code: 'EFAULT', addr: second })

  const unmapped = await app.inject({ method: 'PATCH', url: `/v1/processes/${pid}/mappings/0x10000`, headers: a.headers, payload: { length: 4096, prot: 'r' } })
  t.equal(unmapped.statusCode, 404, 'a range not mapped is the tenant\'s error, not the server out of memory')
  t.match(problem(unmapped), { code: 'WD_ERR_NOT_FOUND', detail: /\[0x10000, 0x11000\) is not wholly mapped/ })
  // a hole inside the range, the mappings on either side untouched
  const three = await mmap(app, a, pid, { length: 3 * 4096, prot: 'rw' })
  const mid = `0x${(Number(three) + 4096).toString(16)}`
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/processes/${pid}/mappings/${mid}?length=4096`, headers: a.headers })).statusCode, 200)
  const holed = await app.inject({ method: 'PATCH', url: `/v1/processes/${pid}/mappings/${three}`, headers: a.headers, payload: { length: 3 * 4096, prot: 'r' } })
  t.equal(holed.statusCode, 404)
  const after = (await app.inject({ method: 'GET', url: `/v1/processes/${pid}/mappings`, headers: a.headers })).json<{ mappings: Array<{ addr: string, prot: string }> }>().mappings
  t.same(after.filter(m => m.addr === three).map(m => m.prot), ['rw'], 'nothing changed')
  const none = await app.inject({ method: 'PATCH', url: `/v1/processes/${pid}/mappings/0x10000`, headers: a.headers, payload: { prot: 'r' } })
  t.equal(none.statusCode, 404)
  const bad = await app.inject({ method: 'PATCH', url: `/v1/processes/${pid}/mappings/${addr}`, headers: a.headers, payload: { prot: 'x' } })
  t.match(problem(bad), { status: 400, field: 'prot' })
})

t.test('a process\'s own limits answer 409 WD_ERR_PROCESS_LIMIT, saying which, not 507', async t => {
  const app = await build(t)
  // a tenant quota large enough that the process's address space is the limit met first
  const a = await createTenant(app, { memoryBytes: 2 ** 40 })
  const pid = await createProcess(app, a)
  const huge = await app.inject({ method: 'POST', url: `/v1/processes/${pid}/mappings`, headers: a.headers, payload: { length: 2 ** 36 + 4096, prot: 'rw' } })
  t.equal(huge.statusCode, 409)
  t.match(problem(huge), { code: 'WD_ERR_PROCESS_LIMIT', detail: /address space would exceed/ })
  const list = await app.inject({ method: 'GET', url: `/v1/processes/${pid}/mappings`, headers: a.headers })
  t.same(list.json().mappings, [], 'nothing mapped')
  // the same size fits in two halves up to the limit, then nothing more does
  t.equal((await app.inject({ method: 'POST', url: `/v1/processes/${pid}/mappings`, headers: a.headers, payload: { length: 2 ** 35, prot: 'r' } })).statusCode, 201)
  t.equal((await app.inject({ method: 'POST', url: `/v1/processes/${pid}/mappings`, headers: a.headers, payload: { length: 2 ** 35, prot: 'r' } })).statusCode, 201)
  const more = await app.inject({ method: 'POST', url: `/v1/processes/${pid}/mappings`, headers: a.headers, payload: { length: 4096, prot: 'r' } })
  t.match(problem(more), { status: 409, code: 'WD_ERR_PROCESS_LIMIT' })
})
