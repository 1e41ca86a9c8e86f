import crypto from 'node:crypto';
import { PooledRandomIdGenerator } from '../../otel/idGenerator';

afterEach(() => jest.restoreAllMocks());

test('gives trace and span ids in the SDK format, all different', () => {
  const ids = new PooledRandomIdGenerator();
  const traceIds = new Set<string>();
  const spanIds = new Set<string>();
  // Several pool refills, with trace and span ids interleaved as a server takes them.
  for (let i = 0; i < 5_000; i++) {
    const traceId = ids.generateTraceId();
    const spanId = ids.generateSpanId();
    expect(traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(spanId).toMatch(/^[0-9a-f]{16}$/);
    traceIds.add(traceId);
    spanIds.add(spanId);
  }
  expect(traceIds.size).toBe(5_000);
  expect(spanIds.size).toBe(5_000);
});

test('draws from the system CSPRNG and never returns an all-zero id', () => {
  const fill = jest.spyOn(crypto, 'randomFillSync');
  // First pool: all zeros, which must be skipped; then real random bytes.
  fill.mockImplementationOnce(<T extends NodeJS.ArrayBufferView>(buffer: T) => {
    new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength).fill(0);
    return buffer;
  });
  const ids = new PooledRandomIdGenerator();
  expect(ids.generateSpanId()).not.toBe('0'.repeat(16));
  expect(ids.generateTraceId()).not.toBe('0'.repeat(32));
  expect(fill).toHaveBeenCalledTimes(2);
});
