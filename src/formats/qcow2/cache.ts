/**
 * A bounded LRU cache of cluster-sized metadata tables (L2 tables, refcount
 * blocks), keyed by host offset. Clean entries are evicted when the cache is
 * over capacity; dirty entries stay until the owner writes them back (the
 * owner keeps their number bounded), so no update is ever lost. Concurrent
 * loads of one table share a single read.
 */

export interface CacheEntry {
  buf: Uint8Array;
  dirty: boolean;
}

export class TableCache {
  private map = new Map<number, CacheEntry>();
  private loading = new Map<number, Promise<Uint8Array>>();
  private dirtyCount = 0;

  constructor(
    readonly capacity: number,
    private readonly load: (offset: number) => Promise<Uint8Array>,
  ) {}

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
    const pending = this.loading.get(offset);
    if (pending) return pending;
    const p = this.load(offset).then(
      (buf) => {
        this.loading.delete(offset);
        // A writer may have inserted its own copy meanwhile (a new table at this offset): keep that.
        const cur = this.map.get(offset);
        if (cur) return cur.buf;
        this.map.set(offset, { buf, dirty: false });
        this.evict();
        return buf;
      },
      (err) => {
        this.loading.delete(offset);
        throw err;
      },
    );
    this.loading.set(offset, p);
    return p;
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
