/**
 * `npm run bench`: every benchmark, each ratio measured against its bare denominator in
 * the same run. Prints Markdown tables; bench/RESULTS.md keeps them with the notes that
 * explain them.
 */
import { machine } from './harness.ts'
import { benchDevice, benchRamp } from './device.bench.ts'
import { benchDoorbell } from './doorbell.bench.ts'
import { benchMediated } from './mediated.bench.ts'
import { benchMm } from './mm.bench.ts'

interface Section { name: string, run: () => Promise<string[]>, header?: string, byNameOnly?: boolean }
const sections: Section[] = [
  { name: 'Memory and IOMMU (issue 2)', run: benchMm },
  { name: 'Device and engines (issue 3)', run: benchDevice },
  { name: 'Mediated submit over HTTP (issue 4)', run: benchMediated },
  { name: 'Doorbell over WebSocket (issue 5)', run: benchDoorbell },
  // why the device section warms its cases as long as it does; only when asked for
  { name: 'Engines from a cold start (ramp)', run: benchRamp, header: '| case | device | bare |', byNameOnly: true }
]

const only = process.argv.slice(2).filter(a => !a.startsWith('--'))
console.log(`# warpdrive benchmarks\n\nMachine: ${machine()}\nDate: ${new Date().toISOString()}\n`)
for (const { name, run, header, byNameOnly } of sections) {
  const named = only.some(o => name.toLowerCase().includes(o.toLowerCase()))
  if (only.length > 0 ? !named : byNameOnly === true) continue
  console.log(`## ${name}\n\n${header ?? '| case | rate | ratio / note |'}\n|---|---|---|`)
  for (const line of await run()) console.log(line)
  console.log()
}
