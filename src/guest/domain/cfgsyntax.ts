/**
 * The syntax of Xen guest configuration files (xl.cfg(5) and the older
 * Python-evaluated xm files): a list of `KEY = VALUE` settings.
 *
 *   file     := { setting | blank } ; settings end at a newline or ';'
 *   setting  := KEY ('=' | '+=') value
 *   value    := string { string }       ; adjacent strings concatenate (Python)
 *             | number                 ; 12, -3, 0x1f, 0o17, 1.5
 *             | '[' [value {',' value} [',']] ']'   ; lists nest (xl vnuma)
 *             | '(' ... ')'            ; a Python tuple, read as a list
 *             | True | False | None    ; Python constants (xm)
 *   string   := '...' | "..." | '''...''' | """...""" with an optional r/u prefix;
 *               backslash escapes as in Python (\n \t \\ \' \" \xHH \ooo,
 *               unknown escapes keep their backslash)
 *   comment  := '#' to the end of the line
 *
 * Newlines inside brackets do not end a setting; a backslash before a
 * newline continues the line. `+=` appends to an earlier list (xl).
 *
 * Every value keeps the line and column where it starts, so later stages
 * can name the place of a bad disk or vif specification. Errors are
 * ImageError('invalid-format') with `FILE:LINE:COLUMN: message`.
 */

import { ImageError } from '../../core/errors.js';

export interface Pos {
  line: number;
  column: number;
}

export type CfgValue =
  | { kind: 'string'; value: string; pos: Pos }
  | { kind: 'number'; value: number; text: string; pos: Pos }
  | { kind: 'bool'; value: boolean; pos: Pos }
  | { kind: 'none'; pos: Pos }
  | { kind: 'list'; items: CfgValue[]; pos: Pos };

export interface CfgSetting {
  key: string;
  value: CfgValue;
  /** Position of the key. */
  pos: Pos;
}

export interface CfgFile {
  fileName: string;
  /** Settings by key; a later setting of the same key replaces the earlier one. */
  settings: Map<string, CfgSetting>;
  warnings: string[];
}

/** Lists deeper than this are refused (hostile input must not exhaust the stack). */
const MAX_DEPTH = 32;

export function cfgError(fileName: string, pos: Pos, message: string, field?: string): ImageError {
  return new ImageError('invalid-format', `${fileName}:${pos.line}:${pos.column}: ${message}`, {
    path: fileName,
    field,
  });
}

export function where(fileName: string, pos: Pos): string {
  return `${fileName}:${pos.line}:${pos.column}`;
}

class Parser {
  private i = 0;
  private line = 1;
  private lineStart = 0;

  constructor(
    private readonly text: string,
    private readonly fileName: string,
  ) {}

  private pos(at = this.i): Pos {
    // `at` is always on the current line when called (tokens never span lines before their start).
    return { line: this.line, column: at - this.lineStart + 1 };
  }

  private fail(pos: Pos, message: string): never {
    throw cfgError(this.fileName, pos, message);
  }

  private newline(): void {
    this.line++;
    this.lineStart = this.i;
  }

  /**
   * Skip blanks and comments. Inside brackets newlines are blanks too;
   * outside, stop before a newline (it ends the setting).
   */
  private skip(insideBrackets: boolean): void {
    const t = this.text;
    for (;;) {
      const c = t[this.i];
      if (c === ' ' || c === '\t' || c === '\r' || c === '\f' || c === '\v') {
        this.i++;
      } else if (c === '#') {
        while (this.i < t.length && t[this.i] !== '\n') this.i++;
      } else if (c === '\\' && (t[this.i + 1] === '\n' || (t[this.i + 1] === '\r' && t[this.i + 2] === '\n'))) {
        this.i += t[this.i + 1] === '\r' ? 3 : 2;
        this.newline();
      } else if (c === '\n' && insideBrackets) {
        this.i++;
        this.newline();
      } else {
        return;
      }
    }
  }

  parse(): CfgFile {
    const settings = new Map<string, CfgSetting>();
    const warnings: string[] = [];
    const t = this.text;
    if (t.charCodeAt(0) === 0xfeff) {
      this.i = 1;
      this.lineStart = 1;
    }
    for (;;) {
      this.skip(false);
      if (this.i >= t.length) break;
      const c = t[this.i]!;
      if (c === '\n') {
        this.i++;
        this.newline();
        continue;
      }
      if (c === ';') {
        this.i++;
        continue;
      }
      const keyPos = this.pos();
      const m = /^[A-Za-z_][A-Za-z0-9_.]*/.exec(t.slice(this.i, this.i + 256));
      if (!m) this.fail(keyPos, `expected a setting name, found ${describeChar(c)}`);
      const key = m[0];
      this.i += key.length;
      this.skip(false);
      let append = false;
      if (t.startsWith('+=', this.i)) {
        append = true;
        this.i += 2;
      } else if (t[this.i] === '=') {
        this.i++;
      } else {
        this.fail(this.pos(), `expected '=' after '${key}', found ${describeChar(t[this.i])}`);
      }
      this.skip(false);
      if (this.i >= t.length || t[this.i] === '\n' || t[this.i] === ';') {
        this.fail(this.pos(), `expected a value for '${key}'`);
      }
      const value = this.value(0);
      this.skip(false);
      if (this.i < t.length && t[this.i] !== '\n' && t[this.i] !== ';') {
        this.fail(this.pos(), `expected the end of the line after the value of '${key}', found ${describeChar(t[this.i])}`);
      }
      const earlier = settings.get(key);
      if (append) {
        if (!earlier) {
          settings.set(key, { key, value, pos: keyPos });
        } else if (earlier.value.kind === 'list') {
          const extra = value.kind === 'list' ? value.items : [value];
          earlier.value.items.push(...extra);
        } else {
          this.fail(keyPos, `'${key} +=' needs a list, but ${key} is a ${earlier.value.kind}`);
        }
        continue;
      }
      if (earlier) {
        warnings.push(
          `${where(this.fileName, keyPos)}: '${key}' set again (first at line ${earlier.pos.line}); the last value is used`,
        );
      }
      settings.set(key, { key, value, pos: keyPos });
    }
    return { fileName: this.fileName, settings, warnings };
  }

  private value(depth: number): CfgValue {
    const t = this.text;
    const pos = this.pos();
    const c = t[this.i];
    if (c === '[' || c === '(') return this.list(depth, pos);
    if (c === '"' || c === "'" || ((c === 'r' || c === 'R' || c === 'u' || c === 'U') && (t[this.i + 1] === '"' || t[this.i + 1] === "'"))) {
      let value = this.string();
      // Python joins adjacent string literals: 'a' "b" == 'ab'.
      for (;;) {
        const save = { i: this.i, line: this.line, lineStart: this.lineStart };
        this.skip(depth > 0);
        const d = t[this.i];
        if (d === '"' || d === "'" || ((d === 'r' || d === 'R' || d === 'u' || d === 'U') && (t[this.i + 1] === '"' || t[this.i + 1] === "'"))) {
          value += this.string();
        } else {
          Object.assign(this, save);
          break;
        }
      }
      return { kind: 'string', value, pos };
    }
    const num = /^-?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)/.exec(t.slice(this.i, this.i + 64));
    if (num) {
      const text = num[0];
      const after = t[this.i + text.length];
      if (after !== undefined && /[A-Za-z0-9_.]/.test(after)) this.fail(pos, `malformed number '${text}${after}'`);
      this.i += text.length;
      const neg = text.startsWith('-');
      const body = neg ? text.slice(1) : text;
      let n: number;
      if (/^0[xX]/.test(body)) n = parseInt(body.slice(2), 16);
      else if (/^0[oO]/.test(body)) n = parseInt(body.slice(2), 8);
      else if (/^0[bB]/.test(body)) n = parseInt(body.slice(2), 2);
      else n = Number(body);
      if (!Number.isFinite(n)) this.fail(pos, `number '${text}' is out of range`);
      return { kind: 'number', value: neg ? -n : n, text, pos };
    }
    const word = /^[A-Za-z_][A-Za-z0-9_]*/.exec(t.slice(this.i, this.i + 256));
    if (word) {
      const w = word[0];
      if (w === 'True' || w === 'False') {
        this.i += w.length;
        return { kind: 'bool', value: w === 'True', pos };
      }
      if (w === 'None') {
        this.i += w.length;
        return { kind: 'none', pos };
      }
      this.fail(pos, `unexpected name '${w}' where a value belongs (strings need quotes)`);
    }
    if (c === ']' || c === ')' || c === ',') this.fail(pos, `expected a value, found '${c}'`);
    this.fail(pos, `expected a value, found ${describeChar(c)}`);
  }

  private list(depth: number, pos: Pos): CfgValue {
    const t = this.text;
    const open = t[this.i]!;
    const close = open === '[' ? ']' : ')';
    const what = open === '[' ? 'list' : 'tuple';
    if (depth >= MAX_DEPTH) this.fail(pos, `lists nested deeper than ${MAX_DEPTH}`);
    this.i++;
    const items: CfgValue[] = [];
    for (;;) {
      this.skip(true);
      if (this.i >= t.length) this.fail(pos, `unterminated ${what}: '${open}' has no matching '${close}'`);
      if (t[this.i] === close) {
        this.i++;
        return { kind: 'list', items, pos };
      }
      items.push(this.value(depth + 1));
      this.skip(true);
      if (this.i >= t.length) this.fail(pos, `unterminated ${what}: '${open}' has no matching '${close}'`);
      const c = t[this.i];
      if (c === ',') {
        this.i++;
        continue;
      }
      if (c === close) continue;
      this.fail(this.pos(), `expected ',' or '${close}' in the ${what} opened at line ${pos.line} column ${pos.column}, found ${describeChar(c)}`);
    }
  }

  /** One string literal at this.i (with optional r/u prefix). */
  private string(): string {
    const t = this.text;
    const start = this.pos();
    let raw = false;
    if (t[this.i] === 'r' || t[this.i] === 'R') {
      raw = true;
      this.i++;
    } else if (t[this.i] === 'u' || t[this.i] === 'U') {
      this.i++;
    }
    const q = t[this.i]!;
    const triple = t.startsWith(q + q + q, this.i);
    const delim = triple ? q + q + q : q;
    this.i += delim.length;
    let out = '';
    for (;;) {
      if (this.i >= t.length) this.fail(start, `unterminated string: ${delim} has no closing ${delim}`);
      const c = t[this.i]!;
      if (t.startsWith(delim, this.i)) {
        this.i += delim.length;
        return out;
      }
      if (c === '\n') {
        if (!triple) this.fail(start, `unterminated string: ${delim} has no closing ${delim} on its line`);
        out += c;
        this.i++;
        this.newline();
        continue;
      }
      if (c === '\\') {
        const d = t[this.i + 1];
        if (d === undefined) this.fail(start, `unterminated string: ${delim} has no closing ${delim}`);
        if (raw) {
          // Raw strings keep the backslash, but it still protects the quote after it.
          out += c + d;
          this.i += 2;
          if (d === '\n') this.newline();
          continue;
        }
        this.i += 2;
        switch (d) {
          case '\n':
            this.newline();
            break; // escaped newline: continuation, nothing added
          case '\\':
          case "'":
          case '"':
            out += d;
            break;
          case 'n':
            out += '\n';
            break;
          case 't':
            out += '\t';
            break;
          case 'r':
            out += '\r';
            break;
          case 'a':
            out += '\x07';
            break;
          case 'b':
            out += '\b';
            break;
          case 'f':
            out += '\f';
            break;
          case 'v':
            out += '\v';
            break;
          case 'x': {
            const hex = /^[0-9a-fA-F]{2}/.exec(t.slice(this.i, this.i + 2));
            if (!hex) this.fail(this.pos(this.i - 2), `bad \\x escape in string (needs two hex digits)`);
            out += String.fromCharCode(parseInt(hex[0], 16));
            this.i += 2;
            break;
          }
          default:
            if (d >= '0' && d <= '7') {
              const oct = /^[0-7]{1,3}/.exec(t.slice(this.i - 1, this.i + 2))![0];
              out += String.fromCharCode(parseInt(oct, 8) & 0xff);
              this.i += oct.length - 1;
            } else {
              out += '\\' + d; // Python keeps unknown escapes as written
            }
        }
        continue;
      }
      out += c;
      this.i++;
    }
  }
}

function describeChar(c: string | undefined): string {
  if (c === undefined) return 'the end of the file';
  if (c === '\n') return 'the end of the line';
  const code = c.charCodeAt(0);
  if (code < 0x20 || code === 0x7f) return `byte 0x${code.toString(16).padStart(2, '0')}`;
  return `'${c}'`;
}

/** Parse the text of an xl/xm configuration file into settings. */
export function parseCfgSyntax(text: string, fileName: string): CfgFile {
  return new Parser(text, fileName).parse();
}

/** A value as plain JavaScript (for messages and tests). */
export function plain(v: CfgValue): unknown {
  switch (v.kind) {
    case 'list':
      return v.items.map(plain);
    case 'none':
      return null;
    default:
      return v.value;
  }
}
