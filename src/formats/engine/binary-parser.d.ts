// binary-parser 2.x ships types for `require` only (its exports map has no
// `types` for `import`): under NodeNext the ESM entry is untyped. Declare it
// with the package's own class type.
declare module 'binary-parser' {
  export { Parser } from '../../../node_modules/binary-parser/dist/binary_parser.js';
}
