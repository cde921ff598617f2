/**
 * The fuzzer's vocabulary.
 *
 * A *target* is one image format: how to build seed images (with qemu-img,
 * into a scratch directory) and where the structure of a seed lies (header
 * fields, tables of entries, regions worth flipping bytes in). The mutation
 * engine (mutate.ts) is generic over that description, so a new format joins
 * by registering a target (targets/index.ts) and nothing else.
 */

export type Endian = 'be' | 'le';

/** One header field: where it is, how wide, and how it is stored. */
export interface FieldSpec {
  name: string;
  offset: number;
  /** Bytes: 1, 2, 4 or 8. Wider fields (uuids, strings) are byte regions. */
  size: 1 | 2 | 4 | 8;
  endian: Endian;
}

/**
 * A table of fixed-size entries located in a seed (an L1 table, an L2 table,
 * a refcount table or block, a VDI block map). `entrySize` 16 covers qcow2
 * extended L2 (entry + bitmap: mutated as two 8-byte halves).
 */
export interface TableSpec {
  name: string;
  offset: number;
  count: number;
  entrySize: 2 | 4 | 8 | 16;
  endian: Endian;
  /** What an entry holds: a byte offset in the file (L1/L2/refcount) or an index (VDI block map). */
  pointsTo: 'offset' | 'index' | 'count';
  /**
   * Values that mean something in this table beyond the generic boundary
   * values (flag bits, sentinels such as VDI's 0xffffffff): OR-ed in or set.
   */
  flags?: readonly bigint[];
  sentinels?: readonly bigint[];
}

/** A byte range worth flipping bytes in (a string, an extension area, a snapshot table). */
export interface RegionSpec {
  name: string;
  offset: number;
  length: number;
}

/** The structure of one seed image, found by the target from the seed's bytes. */
export interface Layout {
  fields: FieldSpec[];
  tables: TableSpec[];
  regions: RegionSpec[];
  /** Format-specific interesting sizes (cluster size, block size): used for offsets and truncations. */
  unit: number;
}

/** A backing file the seed names; it lives next to the cases in the scratch directory. */
export interface BackingSpec {
  /** The name exactly as stored in the image. */
  name: string;
  /** Absolute path of the backing file (inside the scratch directory). */
  path: string;
  format: string;
}

export interface Seed {
  /** Unique among all seeds, e.g. `qcow2-v3-zstd`. */
  name: string;
  /** The format driver that reads it (`--format` for imgtool, `-f` for qemu-img). */
  format: string;
  path: string;
  backing?: BackingSpec;
}

/** Tools a seed builder may use: run qemu-img (and qemu-io), write pattern data. */
export interface SeedContext {
  dir: string;
  qemuImg(args: string[]): Promise<void>;
  qemuIo(args: string[]): Promise<void>;
  /** A raw file of `size` bytes: pattern data with holes and zero runs (deterministic). */
  patternRaw(name: string, size: number, variant: number): string;
}

export interface FuzzTarget {
  /** The format name, as in DRIVERS (src/formats/index.ts). */
  format: string;
  /** Build this format's seed images into ctx.dir. */
  buildSeeds(ctx: SeedContext): Promise<Seed[]>;
  /** Locate header fields, tables and regions in a seed's bytes. */
  layout(bytes: Uint8Array): Promise<Layout>;
  /**
   * Recompute checksums over the mutated bytes (in place), so mutations
   * reach past the checksum test; the engine calls it for most cases.
   * Returns what it resealed.
   */
  reseal?(bytes: Uint8Array, layout: Layout): string | undefined;
  /**
   * For tests and drivers not (yet) in DRIVERS: an absolute path to a module
   * whose `driver` export the worker opens the case with.
   */
  driverModule?: string;
  /** qemu-img's name for the format, when it reads it (the differential slice). */
  qemuFormat?: string;
  /** Does qemu-img take the format's backing file from the image (and accept a `backing` override)? */
  qemuBacking?: boolean;
  /**
   * Why qemu-img must not open these bytes (it would open another file the
   * `backing` override does not cover, such as a qcow2 external data file),
   * or undefined when it may.
   */
  qemuUnsafe?(bytes: Uint8Array): string | undefined;
  /**
   * Byte ranges where imgtool and qemu-img read the format differently on
   * purpose (documented). A data difference after a mutation that touched
   * one is counted as `known-divergence`, not `differs`.
   */
  divergences?: readonly { offset: number; size: number; why: string }[];
}

/** One applied mutation, enough to describe and (with the seed) redo it. */
export type Mutation =
  | { kind: 'field'; field: string; offset: number; size: number; from: string; to: string }
  | { kind: 'entry'; table: string; index: number; offset: number; from: string; to: string; how: string }
  | { kind: 'flip'; region: string; offset: number; from: number; to: number }
  | { kind: 'truncate'; from: number; to: number }
  | { kind: 'extend'; from: number; to: number; fill: 'zero' | 'random' | 'copy' }
  | { kind: 'reseal'; what: string };

export type CaseClass = 'ok' | 'rejected' | 'crash' | 'hang' | 'memory' | 'modified';

/** Failure classes: any of these fails `npm run fuzz` and the CI slice. */
export const FAILURE_CLASSES: readonly string[] = ['crash', 'hang', 'memory', 'modified', 'differs'];
