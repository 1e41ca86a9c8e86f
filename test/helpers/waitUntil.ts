/**
 * Polling with a deadline, for tests that wait for something to happen on a
 * busy machine: never a fixed sleep where a condition can be awaited.
 */

/**
 * Calls `probe` until it returns a truthy value (checked at once, then every
 * `intervalMs`) and resolves with that value; rejects after `timeoutMs` with
 * `what` (a function is called then, to describe the state at that moment).
 */
export async function waitUntil<T>(
  what: string | (() => string),
  probe: () => T | Promise<T>,
  timeoutMs: number,
  intervalMs = 100,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`not met within ${timeoutMs} ms: ${typeof what === 'function' ? what() : what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
