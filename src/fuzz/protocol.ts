/** Messages between the fuzz runner (parent) and its worker process. */

export interface CaseRequest {
  type: 'case';
  id: number;
  path: string;
  /** Force this format; undefined = detect, as the CLI does. */
  format?: string;
  /** Backing files are followed only inside this directory. */
  backingDir: string;
  /** Open with this module's `driver` instead of openImage (tests, unregistered drivers). */
  driverModule?: string;
  /** Write the whole guest view here (raw), for the differential slice. */
  exportPath?: string;
  limits: ReadLimits;
}

export interface ReadLimits {
  /** Bytes read per case, at most (reading stops there: bounded, not a failure). */
  maxBytes: number;
  /** status() calls per case, at most. */
  maxStatus: number;
  /** Export only images up to this virtual size. */
  maxExport: number;
}

export interface ErrorReport {
  name: string;
  message: string;
  kind?: string;
  field?: string;
  offset?: number;
  stack?: string;
}

export interface CaseReply {
  type: 'result';
  id: number;
  outcome: 'ok' | 'rejected' | 'crash';
  error?: ErrorReport;
  /** The driver that read it, its virtual size, its backing file name. */
  driver?: string;
  size?: number;
  backing?: string;
  exported?: boolean;
  /** Peak resident set of the worker during the case, bytes (0 when unknown). */
  peakRss: number;
  /** An exception or rejection that surfaced after the case had replied (a timer, a stray promise). */
  late?: boolean;
}
