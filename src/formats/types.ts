/**
 * What a format driver is.
 *
 * A driver turns a *child* device holding the container (a qcow2 file, a VDI
 * file, ...) into an `Image`: a BlockDevice of the guest's view plus a
 * description of itself. Drivers never open files: the child is given to
 * them, and so is a way to open a backing file (only when the user allowed
 * it). That keeps every driver testable on a MemoryDevice and usable inside
 * other images.
 *
 * Concurrency contract: callers (convert) may have several `read` calls, or
 * several `write` calls to *disjoint* ranges, in flight at once. A driver
 * must serialise its own metadata updates (allocation, L2/refcount/block-map
 * writes) itself.
 */

import type { BlockDevice } from '../core/device.js';

export interface SnapshotInfo {
  id: string;
  name: string;
  'vm-state-size': number;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': number;
  'vm-clock-nsec': number;
  icount?: number;
}

/**
 * `qemu-img info --output=json` field names and value types, so scripts
 * written for qemu-img keep working. `filename` and `actual-size` are filled
 * in by the caller that knows the file.
 */
export interface ImageInfo {
  format: string;
  'virtual-size': number;
  'cluster-size'?: number;
  'dirty-flag'?: boolean;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  'full-backing-filename'?: string;
  'data-file'?: string;
  snapshots?: SnapshotInfo[];
  'format-specific'?: { type: string; data: Record<string, unknown> };
  /** Image.warnings, when there are any (imgtool's addition to qemu-img's fields). */
  warnings?: string[];
}

/**
 * One run of this layer alone (never its backing file), for `map` and `check`:
 * `host` is where the run's bytes start in the container when they lie there
 * contiguously (absent for zero/unallocated runs and compressed clusters,
 * except raw holes, which qemu reports at their own offset).
 */
export interface LayerRun {
  kind: 'data' | 'zero' | 'unallocated' | 'compressed';
  length: number;
  host?: number;
}

export interface Image extends BlockDevice {
  readonly format: string;
  info(): Promise<ImageInfo>;
  /**
   * Problems found in the image that do not change what it reads (fields
   * qemu ignores on its read path too), one line each naming the field, its
   * offset and value. Absent or empty: none. May grow as tables are first
   * read; OpenOptions.warn hears each one as it is found.
   */
  readonly warnings?: readonly string[];
  /** Describe a non-empty prefix of [offset, offset + length) of this layer only (see LayerRun). */
  layerStatus?(offset: number, length: number): Promise<LayerRun>;
  /** The backing image, when one is open (following backing files was allowed). */
  readonly backingImage?: Image;
}

export interface BackingRequest {
  /** The name as stored in the image (relative names are relative to the image's directory). */
  name: string;
  /** The format the image names for it, if any. */
  format?: string;
  /** Where the image stores `format` (for the error when it is not a format imgtool knows). */
  formatField?: { field: string; offset: number };
}

export interface OpenOptions {
  writable?: boolean;
  /** For messages only. */
  path?: string;
  /**
   * Present only when the user allowed following backing files. Returns the
   * backing image, already confined to the allowed directory. A driver whose
   * image names a backing file and gets no opener must throw
   * ImageError('unsupported', ... naming the backing file and the option).
   */
  openBacking?: (req: BackingRequest) => Promise<Image>;
  /** Present only when the user allowed an external data file (qcow2). */
  openDataFile?: (name: string) => Promise<BlockDevice>;
  /** Hears each warning (see Image.warnings) once, when it is found. */
  warn?: (message: string) => void;
  /**
   * Opens a file a multi-file image names as part of itself (VMDK extents),
   * confined to the image's own directory (no `..`, no absolute path or
   * symlink leading out). Absent when the image has no directory (a pipe).
   */
  openExtent?: (name: string) => Promise<BlockDevice>;
  /** Containers holding several disks (OVA): which one, from 0. Default 0. */
  disk?: number;
}

export interface CreateOptions {
  /** Virtual size in bytes. */
  size: number;
  /** `-o key=value` pairs, already split. Drivers reject keys they do not know. */
  options: Record<string, string>;
  /** `-c`: compress data clusters (formats that can). */
  compress?: boolean;
  path?: string;
}

export interface FormatDriver {
  readonly name: string;
  /** File extensions (without dot) that select this format for output. */
  readonly extensions: readonly string[];
  /** Does this look like our format? `head` holds the first bytes of the file (up to 4 KiB; fewer for a small file). */
  probe(head: Uint8Array): boolean;
  /**
   * Formats whose signature is only at the end of the file (fixed VHD): the
   * last 512 bytes (fewer for a small file) and the file's size. Tried when
   * no head probe matched, before falling back to raw.
   */
  probeTail?(tail: Uint8Array, fileSize: number): boolean;
  open(child: BlockDevice, opts: OpenOptions): Promise<Image>;
  /**
   * Lay out a new empty image on `child` (an empty, writable, growable device:
   * writes past its end extend it) and return it open for writing. The image
   * is complete and valid after `close()` (which flushes metadata).
   */
  create?(child: BlockDevice, opts: CreateOptions): Promise<Image>;
  /**
   * Emit a complete image of `source` front to back, for outputs that cannot
   * seek (a pipe). The layout is planned from the source's allocation first
   * (the source must be seekable); chunks are yielded in file order.
   */
  stream?(source: BlockDevice, opts: CreateOptions): AsyncIterable<Uint8Array>;
  /**
   * A freshly created image with these options reads as zero whatever bytes
   * the child holds (its new tables map nothing: qcow2, qcow, dynamic VDI).
   * Absent or false: it reads the child's bytes (raw, fixed VDI), so it is
   * zero-initialised only when the child is (see CreatedImage.zeroInit).
   */
  createsZeroed?(opts: CreateOptions): boolean;
  /** `-o` keys this driver accepts on create, with help text. */
  readonly createOptions?: Readonly<Record<string, string>>;
  /**
   * Record a backing file in a newly created image on `child` (closed by the
   * driver, still empty): `create -b`. The backing file is not opened.
   */
  recordBacking?(child: BlockDevice, backing: { name: string; format?: string }): Promise<void>;
  /**
   * `resize`: change the virtual size of the image in `child` (opened
   * writable, the image not open), crash-safe. The caller has already
   * refused a shrink the user did not ask for.
   */
  resize?(child: BlockDevice, newSize: number): Promise<void>;
  /**
   * `check`: one pass over the image in `child` (opened writable only when
   * repairing), qemu-img check's rules; each finding is passed to `say`.
   */
  check?(child: BlockDevice, repair: Repair, say: (line: string) => void): Promise<CheckResult>;
  /** `measure`: the file size a new image of these options needs (see Measurement). */
  measure?(opts: CreateOptions, source?: MeasureSource): Promise<Measurement>;
}

/** `check -r`: free leaked clusters only, or also repair refcounts that are too low and copied flags. */
export type Repair = 'leaks' | 'all' | undefined;

/** `qemu-img check --output=json` fields (filename and format are added by the caller). */
export interface CheckResult {
  'image-end-offset'?: number;
  'total-clusters'?: number;
  'allocated-clusters'?: number;
  'fragmented-clusters'?: number;
  'compressed-clusters'?: number;
  'check-errors': number;
  leaks?: number;
  corruptions?: number;
  'leaks-fixed'?: number;
  'corruptions-fixed'?: number;
}

/** What `measure` knows of the image to be copied. */
export interface MeasureSource {
  format: string;
  /** Bytes of the `unit`-aligned units (clusters, blocks) holding data, counted as qemu-img measure counts them. */
  allocated(unit: number): Promise<number>;
}

/** `qemu-img measure` JSON: bytes for the allocated data only, and for every cluster written. */
export interface Measurement {
  bitmaps?: number;
  required: number;
  'fully-allocated': number;
}
