/** The warpdrive client SDK: REST (WarpClient) and the doorbell (Doorbell). */
export { WarpClient, WarpError, hexAddr, type QueueView } from './rest.ts'
export { Doorbell, DoorbellError, FRAME, type DescriptorInit, type Hello } from './doorbell.ts'
export { Opcode, Status, Flag, type Completion } from '../hw/descriptor.ts'
