/**
 * mmu notifiers (include/linux/mmu_notifier.h): a chain per address space. Every change
 * to a page table that a device may have cached runs invalidate-range-start (which may
 * wait for device accesses in flight in the range) before it, and invalidate-range-end
 * after it; only after start has returned may a frame be freed or reused.
 */
export const NotifyEvent = {
  UNMAP: 'unmap',
  PROTECTION: 'protection',
  COW: 'cow',
  FORK: 'fork',
  EXIT: 'exit',
  WRITEBACK: 'writeback'
} as const
export type NotifyEvent = typeof NotifyEvent[keyof typeof NotifyEvent]

export interface NotifierRange {
  start: number
  end: number
  event: NotifyEvent
}

export interface MmuNotifier {
  invalidateRangeStart: (range: NotifierRange) => void
  invalidateRangeEnd?: (range: NotifierRange) => void
  /** the address space is going away (exit_mmap) */
  release?: () => void
}

export class MmuNotifierChain {
  readonly #subscribers = new Set<MmuNotifier>()

  register (n: MmuNotifier): void { this.#subscribers.add(n) }
  unregister (n: MmuNotifier): void { this.#subscribers.delete(n) }
  get size (): number { return this.#subscribers.size }

  /** Runs start, the change, then end: the change never runs before every start returned. */
  invalidate<T> (start: number, end: number, event: NotifyEvent, change: () => T): T {
    if (this.#subscribers.size === 0) return change()
    const range = { start, end, event }
    for (const n of this.#subscribers) n.invalidateRangeStart(range)
    try {
      return change()
    } finally {
      for (const n of this.#subscribers) n.invalidateRangeEnd?.(range)
    }
  }

  release (): void {
    for (const n of [...this.#subscribers]) n.release?.()
    this.#subscribers.clear()
  }
}
