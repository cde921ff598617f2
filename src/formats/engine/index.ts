/** The shared engine for mapped image formats: see mapping.ts (what a driver provides) and engine.ts (what it gets). */
export type { Codec, Mapping, MappedFormat } from './mapping.js';
export { MappedDevice, type EngineOptions } from './engine.js';
export { TableCache, WriteBackCache } from './cache.js';
export { compressCluster, decompressCluster } from './codecs.js';
export { DescribedImage } from './image.js';
export { defineStruct, type Struct, type StructValue, type LayoutRow } from './struct.js';
