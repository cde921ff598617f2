/**
 * What a mapped-format driver answers, and what it must provide, for the
 * shared engine (engine.ts) to do everything else.
 *
 * A *mapped* format (qcow, qcow2, VDI, VMDK sparse extents, later VHD/VHDX)
 * stores the guest's bytes in units (clusters, grains, blocks: "clusters"
 * here) that a table maps to places in the container. The driver knows its
 * headers and tables; the engine owns reads, status, writes, zero writes,
 * copy-on-write of partial clusters, decompression, locking and backing.
 *
 *   lookup(offset, length)   one run starting at `offset`, a prefix of the range
 *   allocate(offset)         reserve host space for the cluster holding `offset`
 *                            (nothing points at it yet)
 *   commit(offset, host)     point the table at it: called only after the
 *                            cluster's data is written (data before metadata)
 *   markZero(offset)         record a whole cluster as reading zero (optional)
 *   allocateCompressed / commitCompressed
 *                            the same for a compressed cluster (optional; the
 *                            engine compresses with `writeCodec` when asked to)
 *
 * Optional additions (a driver without them behaves as before):
 *   allocateRun / commitRun  several whole new clusters as one contiguous host
 *                            range: the engine writes them with one write
 *                            (outside the allocation lock) and then commits
 *                            them together. Used when a write covers two or
 *                            more whole clusters that are not stored as data.
 *   data.shared              a data run that must not be written in place (a
 *                            cluster other tables also point to: qcow2
 *                            snapshots, refcount > 1; or one the driver wants
 *                            rebuilt whole under the allocation lock: qcow2
 *                            extended L2 clusters with subclusters not
 *                            allocated): a write builds the cluster anew
 *                            (copy-on-write) in host space from `allocate`
 *                            (which may be the same cluster when it is the
 *                            driver's alone); `commit` releases the old one
 *                            when it differs.
 *   hostEnd                  where the driver's host space ends; with the
 *                            engine option `growAhead` the container is grown
 *                            in steps ahead of writes and trimmed back to it
 *                            when the device closes.
 *   compressed.exact         the stream must fill the cluster (qcow2)
 * Engine options (engine.ts) for these: `data` (the device data runs live on,
 * e.g. qcow2's external data file; compressed runs stay in the container),
 * `growAhead`, `skipZeroWrites` (a write of zeros onto a cluster that reads
 * as zero allocates nothing) and `unallocatedPastBacking` (status past the
 * backing file's end says 'unallocated', as qemu-img map does for qcow2).
 *
 * Locking: allocate*, commit*, markZero and flush are called under the
 * engine's allocation lock (one at a time); lookup is not: it runs beside
 * them, and its answer must hold for the clusters of its own request (no
 * other request writes those: the formats/types.ts contract).
 */

export type Codec = 'deflate' | 'zlib' | 'zstd';

/** One run of guest bytes, as a sum type: the fields present are exactly the ones that kind has. */
export type Mapping =
  /** Nothing stored in this layer: the backing file's bytes, or zeros. */
  | { readonly kind: 'unallocated'; readonly length: number }
  /** Recorded as reading zero. */
  | { readonly kind: 'zero'; readonly length: number }
  /**
   * Stored uncompressed, contiguous at [host, host + length) of the container
   * (or the engine's `data` device). `shared`: other tables point there too;
   * writes copy the cluster to new host space instead of writing in place.
   */
  | { readonly kind: 'data'; readonly length: number; readonly host: number; readonly shared?: boolean }
  /**
   * One compressed cluster: `stored` bytes at `host` decode (with `codec`) to
   * the cluster holding the run's first byte; `length` never crosses that
   * cluster's end.
   */
  | {
      readonly kind: 'compressed';
      readonly length: number;
      readonly host: number;
      readonly stored: number;
      readonly codec: Codec;
      /** The stream must decode to the whole cluster (qcow2: qemu fails a short one); messages then name the guest offset. */
      readonly exact?: boolean;
    };

export interface MappedFormat {
  /** The format's name, for messages. */
  readonly name: string;
  /** Guest size in bytes. */
  readonly size: number;
  /** Bytes per cluster (a power of two); clusters are aligned in the guest. */
  readonly clusterSize: number;
  /** Describe a non-empty prefix of [offset, offset + length) (inside [0, size)). */
  lookup(offset: number, length: number): Promise<Mapping>;
  /** Reserve `clusterSize` bytes of host space for the cluster holding `offset`; nothing maps to it yet. */
  allocate?(offset: number): Promise<number>;
  /** Map the cluster holding `offset` to `host`; the engine has written its data already. */
  commit?(offset: number, host: number): Promise<void>;
  /** The codec compressed clusters are written with (formats that write them). */
  readonly writeCodec?: Codec;
  /** Reserve `stored` bytes of host space for the compressed cluster holding `offset`. */
  allocateCompressed?(offset: number, stored: number): Promise<number>;
  /** Map the cluster holding `offset` to `stored` compressed bytes at `host` (written already). */
  commitCompressed?(offset: number, host: number, stored: number): Promise<void>;
  /** Record the (whole) cluster holding `offset` as zero; false when the format cannot. */
  markZero?(offset: number): Promise<boolean>;
  /** Write back whatever metadata the driver defers. */
  flush?(): Promise<void>;
  /**
   * Reserve `clusters * clusterSize` contiguous bytes of host space for the
   * whole clusters starting at `offset` (cluster aligned); nothing maps to
   * them yet. Called under the allocation lock; with `commitRun`.
   */
  allocateRun?(offset: number, clusters: number): Promise<number>;
  /** Map the `clusters` clusters from `offset` to [host, ...) (their data is written already). Called under the allocation lock. */
  commitRun?(offset: number, clusters: number, host: number): Promise<void>;
  /** The end of the host space in use (engine option `growAhead` trims the container to it at close). */
  hostEnd?(): number;
}
