/**
 * Whether a polling engine would take a core from anyone: the share of its recent checks
 * that found more runnable threads on the machine than it has cores.
 *
 * A share, not a run of checks in a row: what makes a third runnable thread beside the
 * main thread and a polling engine comes in two shapes. A load generator beside the
 * service (issue 4's benchmark, a tenant's load test) is there in most checks: 75% of
 * them with the mediated path's generator, which alternates with the main thread and so
 * does not fill every check. V8's GC and compiler threads, and whatever else the machine
 * runs, come in bursts: 4-14% of the checks during a one-tenant doorbell's ping-pong, in
 * runs of up to a few milliseconds. Three contended checks in a row (the rule until the
 * eleventh session) sent the engine to sleep for 20 ms 25-40 times a second during that
 * ping-pong, half its time, and each publish then paid a wake. Alternated with that rule
 * (four pairs of runs, bench/RESULTS.md): p50 latency 1.51-2.23x the bare ws
 * ping-pong's against 2.28-4.38x; one tenant at 32 a frame 39-49% of the bare echo
 * against 37-41%; the mediated path 84-98% of the bare route against 77-85%.
 */

/** the weight of each check in the share: a moving average over some 32 checks (6 ms at 0.2 ms) */
export const CONTENTION_WEIGHT = 1 / 32
/** past this share, the engine stands back: more often contended than not */
export const CONTENDED_SHARE = 0.5

export class ContentionScore {
  /** the moving share of contended checks, 0 to 1; it keeps its value while the engine stands back */
  share = 0

  /** Counts one check; answers whether the engine should stand back now. */
  check (runnable: number, cores: number): boolean {
    this.share += ((runnable > cores ? 1 : 0) - this.share) * CONTENTION_WEIGHT
    return this.share > CONTENDED_SHARE
  }
}
