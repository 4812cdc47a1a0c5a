/**
 * The doorbell channel's frame layout (PROTOCOL.md section 5), named once for the server
 * route and the client SDK: an 8-byte header (type, three reserved zero bytes, a 32-bit
 * value) and the frame types.
 */
export const PROTOCOL_VERSION = 1
export const FRAME_HEADER = 8

export const Frame = {
  SUBMIT: 0x01,
  STORE: 0x02,
  LOAD: 0x03,
  HELLO: 0x80,
  COMPLETIONS: 0x81,
  LOAD_DATA: 0x82,
  STORE_FAULT: 0x83,
  STATUS: 0x84,
  PROTOCOL_ERROR: 0x8f
} as const

/** A frame buffer with its header written and `bodyLength` bytes of body to fill. */
export function frame (type: number, value: number, bodyLength: number): Buffer {
  const b = Buffer.allocUnsafe(FRAME_HEADER + bodyLength)
  b[0] = type
  b[1] = b[2] = b[3] = 0
  b.writeUInt32LE(value >>> 0, 4)
  return b
}

export interface Hello {
  queue: string
  pasid: number
  depth: number
  maxTransferSize: number
  maxBatchSize: number
  maxFrameBytes: number
  device: string
}
