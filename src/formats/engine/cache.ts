/**
 * A bounded table cache for format drivers: at most `capacity` tables
 * (grain tables, L2 tables, block-map chunks) held, least recently used
 * dropped first; concurrent loads of one key share one read.
 */

/** `load()` for `key`, shared by concurrent callers through `loading`; `loaded` files the result. */
function loadOnce<T>(loading: Map<number, Promise<T>>, key: number, load: () => Promise<T>, loaded: (v: T) => T): Promise<T> {
  const pending = loading.get(key);
  if (pending) return pending;
  const p = load().then(
    (v) => {
      loading.delete(key);
      return loaded(v);
    },
    (e: unknown) => {
      loading.delete(key);
      throw e;
    },
  );
  loading.set(key, p);
  return p;
}

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
    return loadOnce(this.loading, key, load, (v) => {
      this.put(key, v);
      return v;
    });
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

/**
 * A bounded LRU cache of cluster-sized metadata tables a driver writes back
 * (qcow2 L2 tables and refcount blocks), keyed by host offset. Clean entries
 * are evicted when the cache is over capacity; dirty entries stay until the
 * owner writes them back (the owner keeps their number bounded: see
 * `dirty`), so no update is lost and each table is written once per
 * write-back however many entries changed. Concurrent loads share one read.
 */
export class WriteBackCache {
  private map = new Map<number, { buf: Uint8Array; dirty: boolean }>();
  private loading = new Map<number, Promise<Uint8Array>>();
  private dirtyCount = 0;

  constructor(
    readonly capacity: number,
    private readonly load: (offset: number) => Promise<Uint8Array>,
  ) {}

  /** How many tables are modified and not written back. */
  get dirty(): number {
    return this.dirtyCount;
  }

  async get(offset: number): Promise<Uint8Array> {
    const e = this.map.get(offset);
    if (e) {
      this.map.delete(offset);
      this.map.set(offset, e);
      return e.buf;
    }
    return loadOnce(this.loading, offset, () => this.load(offset), (buf) => {
      // A writer may have inserted its own copy meanwhile (a new table at this offset): keep that.
      const cur = this.map.get(offset);
      if (cur) return cur.buf;
      this.map.set(offset, { buf, dirty: false });
      this.evict();
      return buf;
    });
  }

  /** Insert or re-insert a table as modified. */
  markDirty(offset: number, buf: Uint8Array): void {
    const e = this.map.get(offset);
    if (e) {
      this.map.delete(offset);
      if (!e.dirty) this.dirtyCount++;
    } else this.dirtyCount++;
    this.map.set(offset, { buf, dirty: true });
  }

  /** Forget a table (its cluster was freed). */
  drop(offset: number): void {
    const e = this.map.get(offset);
    if (e?.dirty) this.dirtyCount--;
    this.map.delete(offset);
  }

  /** Dirty entries, oldest first. */
  dirtyEntries(): Array<[number, Uint8Array]> {
    const out: Array<[number, Uint8Array]> = [];
    for (const [off, e] of this.map) if (e.dirty) out.push([off, e.buf]);
    return out;
  }

  markClean(offset: number, buf: Uint8Array): void {
    const e = this.map.get(offset);
    if (e && e.dirty && e.buf === buf) {
      e.dirty = false;
      this.dirtyCount--;
    }
    this.evict();
  }

  private evict(): void {
    if (this.map.size <= this.capacity) return;
    for (const [off, e] of this.map) {
      if (this.map.size <= this.capacity) break;
      if (!e.dirty) this.map.delete(off);
    }
  }
}
