/**
 * A bounded table cache for format drivers: at most `capacity` tables
 * (grain tables, L2 tables, block-map chunks) held, least recently used
 * dropped first; concurrent loads of one key share one read.
 */

export class TableCache<T> {
  private readonly entries = new Map<number, T>();
  private readonly loading = new Map<number, Promise<T>>();

  constructor(readonly capacity: number) {
    if (!(capacity >= 1)) throw new RangeError('a table cache holds at least one table');
  }

  /** The cached table for `key`, or load it. */
  async get(key: number, load: () => Promise<T>): Promise<T> {
    const hit = this.entries.get(key);
    if (hit !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, hit);
      return hit;
    }
    const pending = this.loading.get(key);
    if (pending) return pending;
    const p = load().then(
      (v) => {
        this.loading.delete(key);
        this.put(key, v);
        return v;
      },
      (e: unknown) => {
        this.loading.delete(key);
        throw e;
      },
    );
    this.loading.set(key, p);
    return p;
  }

  /** Insert or replace, evicting the least recently used table past capacity. */
  put(key: number, value: T): void {
    this.entries.delete(key);
    this.entries.set(key, value);
    while (this.entries.size > this.capacity) this.entries.delete(this.entries.keys().next().value as number);
  }

  peek(key: number): T | undefined {
    return this.entries.get(key);
  }

  get size(): number {
    return this.entries.size;
  }
}
