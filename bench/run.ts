/**
 * `npm run bench`: every benchmark, each ratio measured against its bare denominator in
 * the same run. Prints Markdown tables; bench/RESULTS.md keeps them with the notes that
 * explain them.
 */
import { machine } from './harness.ts'
import { benchDevice } from './device.bench.ts'
import { benchDoorbell } from './doorbell.bench.ts'
import { benchMediated } from './mediated.bench.ts'
import { benchMm } from './mm.bench.ts'

const sections: Array<[string, () => Promise<string[]>]> = [
  ['Memory and IOMMU (issue 2)', benchMm],
  ['Device and engines (issue 3)', benchDevice],
  ['Mediated submit over HTTP (issue 4)', benchMediated],
  ['Doorbell over WebSocket (issue 5)', benchDoorbell]
]

const only = process.argv.slice(2).filter(a => !a.startsWith('--'))
console.log(`# warpdrive benchmarks\n\nMachine: ${machine()}\nDate: ${new Date().toISOString()}\n`)
for (const [name, fn] of sections) {
  if (only.length > 0 && !only.some(o => name.toLowerCase().includes(o.toLowerCase()))) continue
  console.log(`## ${name}\n\n| case | rate | ratio / note |\n|---|---|---|`)
  for (const line of await fn()) console.log(line)
  console.log()
}
