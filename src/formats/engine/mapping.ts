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
 */

export type Codec = 'deflate' | 'zlib' | 'zstd';

/** One run of guest bytes, as a sum type: the fields present are exactly the ones that kind has. */
export type Mapping =
  /** Nothing stored in this layer: the backing file's bytes, or zeros. */
  | { readonly kind: 'unallocated'; readonly length: number }
  /** Recorded as reading zero. */
  | { readonly kind: 'zero'; readonly length: number }
  /** Stored uncompressed, contiguous at [host, host + length) of the container. */
  | { readonly kind: 'data'; readonly length: number; readonly host: number }
  /**
   * One compressed cluster: `stored` bytes at `host` decode (with `codec`) to
   * the cluster holding the run's first byte; `length` never crosses that
   * cluster's end.
   */
  | { readonly kind: 'compressed'; readonly length: number; readonly host: number; readonly stored: number; readonly codec: Codec };

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
}
