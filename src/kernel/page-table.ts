/**
 * A process's page table: virtual page number to pte, in leaves of 512 entries (the
 * 2 MiB an x86-64 page-table page covers) found through a map of leaf numbers, with the
 * leaf used last remembered. The IOMMU walks it on every IOTLB miss, and neighbouring
 * pages share a leaf: a walk is an array index where a Map of every page cost a hash
 * lookup of about 230 ns once it held thousands of pages (thirteenth session).
 *
 * It answers to the part of Map's interface the kernel uses (get, set, has, delete, size,
 * keys, iteration), so a pte is any number >= 0. Iteration is leaf by leaf, in the
 * order the leaves were made, and sees deletions made during it, as a Map's does.
 */

const LEAF_SHIFT = 9
const LEAF_ENTRIES = 1 << LEAF_SHIFT
const LEAF_MASK = LEAF_ENTRIES - 1
/** the leaf's own count of present entries, after its ptes */
const COUNT = LEAF_ENTRIES
const NONE = -1

export class PageTable {
  readonly #leaves = new Map<number, Float64Array>()
  #lastIndex = -1
  #lastLeaf: Float64Array | undefined
  #size = 0

  get size (): number { return this.#size }

  #leaf (vpn: number): Float64Array | undefined {
    const index = Math.floor(vpn / LEAF_ENTRIES)
    if (index === this.#lastIndex) return this.#lastLeaf
    const leaf = this.#leaves.get(index)
    if (leaf !== undefined) {
      this.#lastIndex = index
      this.#lastLeaf = leaf
    }
    return leaf
  }

  get (vpn: number): number | undefined {
    const leaf = this.#leaf(vpn)
    if (leaf === undefined) return undefined
    // `&` takes the low bits of any integer below 2**53
    const pte = leaf[vpn & LEAF_MASK]
    return pte === NONE ? undefined : pte
  }

  has (vpn: number): boolean {
    return this.get(vpn) !== undefined
  }

  set (vpn: number, pte: number): this {
    if (!(pte >= 0)) throw new RangeError(`pte ${pte} is not a number >= 0`)
    let leaf = this.#leaf(vpn)
    if (leaf === undefined) {
      const index = Math.floor(vpn / LEAF_ENTRIES)
      leaf = new Float64Array(LEAF_ENTRIES + 1).fill(NONE)
      leaf[COUNT] = 0
      this.#leaves.set(index, leaf)
      this.#lastIndex = index
      this.#lastLeaf = leaf
    }
    const at = vpn & LEAF_MASK
    if (leaf[at] === NONE) {
      leaf[COUNT]++
      this.#size++
    }
    leaf[at] = pte
    return this
  }

  delete (vpn: number): boolean {
    const leaf = this.#leaf(vpn)
    if (leaf === undefined) return false
    const at = vpn & LEAF_MASK
    if (leaf[at] === NONE) return false
    leaf[at] = NONE
    this.#size--
    // an empty leaf goes, so a sparse address space costs only what it maps
    if (--leaf[COUNT] === 0) {
      const index = Math.floor(vpn / LEAF_ENTRIES)
      this.#leaves.delete(index)
      if (this.#lastIndex === index) {
        this.#lastIndex = -1
        this.#lastLeaf = undefined
      }
    }
    return true
  }

  * entries (): IterableIterator<[number, number]> {
    for (const [index, leaf] of this.#leaves) {
      const base = index * LEAF_ENTRIES
      for (let i = 0; i < LEAF_ENTRIES; i++) {
        const pte = leaf[i]
        if (pte !== NONE) yield [base + i, pte]
      }
    }
  }

  * keys (): IterableIterator<number> {
    for (const [vpn] of this.entries()) yield vpn
  }

  [Symbol.iterator] (): IterableIterator<[number, number]> {
    return this.entries()
  }
}
