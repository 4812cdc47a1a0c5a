/**
 * Shared by the benchmarks: a timed loop that runs until both a minimum count and a
 * minimum time are reached, and a pairing helper that interleaves a measured case with
 * its denominator so a slow phase of the machine hits both alike.
 */
import os from 'node:os'

export interface Rate {
  ops: number
  seconds: number
  perSecond: number
}

export function measure (fn: () => number | undefined, minSeconds = 0.5, minOps = 1000): Rate {
  let ops = 0
  const t0 = process.hrtime.bigint()
  let elapsed = 0
  while (ops < minOps || elapsed < minSeconds) {
    ops += fn() ?? 1
    elapsed = Number(process.hrtime.bigint() - t0) / 1e9
  }
  return { ops, seconds: elapsed, perSecond: ops / elapsed }
}

export async function measureAsync (fn: () => Promise<number | undefined>, minSeconds = 0.5, minOps = 100): Promise<Rate> {
  let ops = 0
  const t0 = process.hrtime.bigint()
  let elapsed = 0
  while (ops < minOps || elapsed < minSeconds) {
    ops += (await fn()) ?? 1
    elapsed = Number(process.hrtime.bigint() - t0) / 1e9
  }
  return { ops, seconds: elapsed, perSecond: ops / elapsed }
}

/**
 * Runs (case, denominator) pairs `rounds` times, alternating, and answers the median
 * ratio. `warm` pairs run first and are not counted: a case whose first run still
 * compiles its path reads low against a denominator that warms faster.
 */
export async function paired (rounds: number, run: () => Promise<[number, number]> | [number, number], warm = 0): Promise<{ num: number, den: number, ratio: number }> {
  for (let i = 0; i < warm; i++) await run()
  const nums: number[] = []
  const dens: number[] = []
  const ratios: number[] = []
  for (let i = 0; i < rounds; i++) {
    const [n, d] = await run()
    nums.push(n)
    dens.push(d)
    ratios.push(n / d)
  }
  const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]
  return { num: med(nums), den: med(dens), ratio: med(ratios) }
}

export function machine (): string {
  const cpus = os.cpus()
  return `${cpus.length} x ${cpus[0]?.model ?? 'unknown cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}`
}

export function fmt (n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} G`
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`
  return n.toFixed(1)
}
