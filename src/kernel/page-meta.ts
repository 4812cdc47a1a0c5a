/**
 * The kernel's per-frame state beside the hardware refcount (the rest of struct page):
 * how many page-table entries map the frame (mapcount, which decides copy-on-write
 * reuse, so pins never make a page look shared: the PageAnonExclusive rule of Linux 5.19),
 * and how many DMA pins hold it (FOLL_PIN's pincount).
 */
export class PageMeta {
  readonly mapcount: Uint32Array
  readonly pincount: Uint32Array
  readonly #unpinWaiters = new Map<number, Array<() => void>>()

  constructor (nframes: number) {
    this.mapcount = new Uint32Array(nframes)
    this.pincount = new Uint32Array(nframes)
  }

  isPinned (frame: number): boolean { return this.pincount[frame] > 0 }

  pin (frame: number): void { this.pincount[frame]++ }

  unpin (frame: number): void {
    if (this.pincount[frame] === 0) throw new Error(`unpin of unpinned frame ${frame}`)
    if (--this.pincount[frame] === 0) {
      const waiters = this.#unpinWaiters.get(frame)
      if (waiters !== undefined) {
        this.#unpinWaiters.delete(frame)
        for (const w of waiters) w()
      }
    }
  }

  /** Resolves once the frame has no pins (writeback waits on this for stable pages). */
  async waitUnpinned (frame: number): Promise<void> {
    if (this.pincount[frame] === 0) return
    await new Promise<void>(resolve => {
      const list = this.#unpinWaiters.get(frame)
      if (list === undefined) this.#unpinWaiters.set(frame, [resolve])
      else list.push(resolve)
    })
  }
}
