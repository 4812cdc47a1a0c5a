/**
 * A process (struct task_struct, reduced to what this machine needs): a pid, the tenant
 * that owns it, its address space, and its PASID once bound to an SVA device. Exit hooks
 * let the accelerator subsystem release queues (and so unpin) before the address space
 * goes, as exit_files runs before exit_mm's final mmput in kernel/exit.c.
 */
import type { Mm } from './mm.ts'

export class Process {
  readonly pid: number
  readonly tenant: string
  readonly ppid: number | undefined
  readonly mm: Mm
  readonly createdAt = Date.now()
  pasid: number | undefined
  state: 'running' | 'exited' = 'running'
  readonly exitHooks: Array<(p: Process) => void> = []

  constructor (pid: number, tenant: string, mm: Mm, ppid?: number) {
    this.pid = pid
    this.tenant = tenant
    this.mm = mm
    this.ppid = ppid
  }
}
