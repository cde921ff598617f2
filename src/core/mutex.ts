/**
 * A minimal async mutex: drivers serialise their metadata updates with it
 * while reads and data writes run concurrently (see the concurrency contract
 * in formats/types.ts).
 */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();

  /** Wait for the lock; call the returned function to release it. */
  async lock(): Promise<() => void> {
    let release!: () => void;
    const next = new Promise<void>((r) => (release = r));
    const prev = this.tail;
    this.tail = prev.then(() => next);
    await prev;
    return release;
  }

  /** Run `fn` holding the lock. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.lock();
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
