import t from 'tap'
import { CONTENDED_SHARE, ContentionScore } from '../../src/hw/contention.ts'

const CORES = 2

/** Runs `pattern` (true: a third runnable thread) through a fresh score; answers the checks at which it stood back. */
function standsBack (pattern: boolean[]): number[] {
  const s = new ContentionScore()
  const out: number[] = []
  pattern.forEach((contended, i) => { if (s.check(contended ? CORES + 1 : CORES, CORES)) out.push(i) })
  return out
}

t.test('a machine with no more runnable threads than cores never sends the engine back', async t => {
  t.same(standsBack(Array.from({ length: 10_000 }, () => false)), [])
  const s = new ContentionScore()
  let back = 0
  for (let i = 0; i < 1000; i++) if (s.check(1, CORES)) back++
  t.equal(back, 0, 'fewer than cores, too')
})

t.test('a load generator beside the service: contended in most checks, it stands back', async t => {
  // always there: within some 22 checks (4.4 ms at the engine's 0.2 ms)
  const always = standsBack(Array.from({ length: 200 }, () => true))
  t.ok(always.length > 0 && always[0] < 30, `stood back at check ${always[0]}`)
  // alternating with the main thread, three checks in four (the mediated benchmark's shape)
  const mostly = standsBack(Array.from({ length: 400 }, (_, i) => i % 4 !== 0))
  t.ok(mostly.length > 0 && mostly[0] < 64, `stood back at check ${mostly[0]}`)
})

t.test('bursts of a third thread (GC, the kernel) do not send it back, where three in a row did', async t => {
  // bursts of up to 10 contended checks (2 ms) among 90 quiet ones: 10% of the checks,
  // the shape seen during a one-tenant doorbell's ping-pong
  const pattern: boolean[] = []
  for (let b = 0; b < 100; b++) {
    const burst = 3 + (b * 7) % 8
    for (let i = 0; i < burst; i++) pattern.push(true)
    for (let i = 0; i < 90; i++) pattern.push(false)
  }
  t.same(standsBack(pattern), [], 'never')
  let run = 0
  t.ok(pattern.some(c => (run = c ? run + 1 : 0) >= 3), 'the old rule (three in a row) would have')
})

t.test('the share is kept while the engine stands back: back again at once, or polling after a quiet check or two', async t => {
  const s = new ContentionScore()
  let n = 0
  while (!s.check(CORES + 1, CORES)) n++
  t.ok(s.share > CONTENDED_SHARE && n < 30, `stood back at check ${n}`)
  // the engine checks once after each backoff: still there, back at once
  t.ok(s.check(CORES + 1, CORES), 'contended again: stands back again')
  // gone: the share falls under the line within a few checks, one a backoff
  let quiet = 1
  while (s.check(CORES, CORES)) quiet++
  t.ok(quiet <= 3, `polls again after ${quiet} quiet checks`)
})
