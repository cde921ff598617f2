/**
 * Reading and writing libvirt XML with @xmldom/xmldom.
 *
 * Reading is strict: any parser warning or error is an ImageError
 * ('invalid-format') naming FILE:LINE:COLUMN, and a document must have one
 * root element. Entities other than XML's five are refused by the parser.
 *
 * Writing builds a small tree (XNode) and serialises it through xmldom's
 * DOM and XMLSerializer with two-space indentation, as `virsh dumpxml`.
 */

import { DOMImplementation, DOMParser, XMLSerializer } from '@xmldom/xmldom';
import { ImageError } from '../../core/errors.js';

/** Parse XML text; errors name the file, line and column. */
export function parseXmlStrict(text: string, fileName: string): Element {
  let first: { message: string; line?: number; column?: number } | undefined;
  const record = (m: string) => {
    if (first) return;
    const loc = /@[^\n]*#\[line:(\d+),col:(\d+)\]/.exec(m);
    const message = m
      .replace(/\n@[^\n]*$/gm, '')
      .replace(/^\[xmldom [a-zA-Z]+\]\t/, '')
      .trim();
    first = { message, line: loc ? Number(loc[1]) : undefined, column: loc ? Number(loc[2]) : undefined };
  };
  const fail = (): never => {
    const f = first!;
    const at = f.line !== undefined ? `${fileName}:${f.line}:${f.column}` : fileName;
    throw new ImageError('invalid-format', `${at}: malformed XML: ${f.message}`, { path: fileName });
  };
  let doc: Document;
  try {
    doc = new DOMParser({
      locator: {},
      errorHandler: {
        warning: (m: string) => record(m),
        error: (m: string) => {
          record(m);
          throw new Error(m);
        },
        fatalError: (m: string) => {
          record(m);
          throw new Error(m);
        },
      },
    }).parseFromString(text, 'text/xml') as unknown as Document;
  } catch (e) {
    if (!first) record(String((e as Error)?.message ?? e));
    return fail();
  }
  if (first) fail();
  const root = doc.documentElement;
  if (!root) throw new ImageError('invalid-format', `${fileName}: not XML: no root element`, { path: fileName });
  return root;
}

/** Element children of `el`, optionally only those named `name`. */
export function kids(el: Element, name?: string): Element[] {
  const out: Element[] = [];
  for (let n = el.firstChild; n; n = n.nextSibling) {
    if (n.nodeType === 1 && (name === undefined || (n as Element).tagName === name)) out.push(n as Element);
  }
  return out;
}

export function kid(el: Element | undefined, name: string): Element | undefined {
  if (!el) return undefined;
  for (let n = el.firstChild; n; n = n.nextSibling) {
    if (n.nodeType === 1 && (n as Element).tagName === name) return n as Element;
  }
  return undefined;
}

/** An attribute, or undefined when absent (xmldom returns '' for missing attributes). */
export function attr(el: Element | undefined, name: string): string | undefined {
  if (!el || !el.hasAttribute(name)) return undefined;
  return el.getAttribute(name) ?? undefined;
}

export function text(el: Element | undefined): string | undefined {
  if (!el) return undefined;
  return (el.textContent ?? '').trim();
}

/** Line:column of an element when the parser recorded it. */
export function elWhere(fileName: string, el: Element): string {
  const n = el as unknown as { lineNumber?: number; columnNumber?: number };
  return n.lineNumber ? `${fileName}:${n.lineNumber}:${n.columnNumber}` : fileName;
}

// ---------------------------------------------------------------- writing

export interface XNode {
  name: string;
  attrs: [string, string][];
  children: XNode[];
  text?: string;
}

type AttrValue = string | number | boolean | undefined | null;
type Child = XNode | undefined | null | false | '' | 0 | Child[];

/** Build an element; undefined attributes and children are left out. */
export function el(name: string, attrs: Record<string, AttrValue> = {}, ...children: Child[]): XNode {
  const a: [string, string][] = [];
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    a.push([k, v === true ? 'yes' : String(v)]);
  }
  const c: XNode[] = [];
  const add = (x: Child) => {
    if (Array.isArray(x)) x.forEach(add);
    else if (x) c.push(x);
  };
  children.forEach(add);
  return { name, attrs: a, children: c };
}

/** An element holding text. */
export function tel(name: string, value: string | number, attrs: Record<string, AttrValue> = {}): XNode {
  const n = el(name, attrs);
  n.text = String(value);
  return n;
}

/** Control characters XML 1.0 cannot carry, or libvirt's patterns refuse, in attributes and in text. */
const BAD_IN_ATTR = /[\x00-\x1f\x7f]/;
const BAD_IN_TEXT = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/;

function refuseControl(value: string, where: string, bad: RegExp): void {
  const m = bad.exec(value);
  if (m) {
    const code = m[0].charCodeAt(0).toString(16).padStart(4, '0');
    throw new ImageError('invalid-format', `${where} ${JSON.stringify(value)} holds control character U+${code}, which libvirt XML cannot carry`, {
      field: where,
      value,
    });
  }
}

/**
 * Serialise with two-space indentation and a final newline. Values with
 * control characters are refused (ImageError 'invalid-format' naming the
 * element), never written as XML libvirt would reject.
 */
export function serialize(root: XNode): string {
  const doc = new DOMImplementation().createDocument(null, root.name, null);
  const build = (node: XNode, target: Element, depth: number) => {
    for (const [k, v] of node.attrs) {
      refuseControl(v, `<${node.name} ${k}>`, BAD_IN_ATTR);
      target.setAttribute(k, v);
    }
    if (node.text !== undefined) {
      refuseControl(node.text, `<${node.name}>`, node.name === 'description' ? BAD_IN_TEXT : BAD_IN_ATTR);
      target.appendChild(doc.createTextNode(node.text));
    }
    if (node.children.length) {
      for (const child of node.children) {
        target.appendChild(doc.createTextNode('\n' + '  '.repeat(depth + 1)));
        const e = doc.createElement(child.name);
        build(child, e, depth + 1);
        target.appendChild(e);
      }
      target.appendChild(doc.createTextNode('\n' + '  '.repeat(depth)));
    }
  };
  build(root, doc.documentElement as unknown as Element, 0);
  return new XMLSerializer().serializeToString(doc as unknown as Node) + '\n';
}
