/**
 * ONNX reader: decode the protobuf (nothing in it is executed), check every tensor's size against its bytes
 * before copying, and turn the graph into a plan of nodes with constant inputs resolved. The plan is imported
 * op by op into the module graph by models/onnx_graph.ts.
 */
import * as fs from 'node:fs';
import { onnx } from 'onnx-proto';
import { InputError } from '../errors';

/** A constant tensor (initializer or Constant node) in ONNX's layout. */
export interface OnnxConst {
  dims: number[];
  /** float32 for floating types, int64 values as numbers for integer types. */
  data: Float32Array | number[];
}

export type OnnxAttr = number | number[] | string | OnnxConst;

export type OnnxAttrType = 'int' | 'ints' | 'float' | 'floats' | 'string' | 'tensor';

export interface OnnxNode {
  op: string;
  name: string;
  inputs: string[];
  outputs: string[];
  attrs: Record<string, OnnxAttr>;
  /** Each attribute's ONNX type (numbers alone cannot tell an int from a float when writing back). */
  attrTypes: Record<string, OnnxAttrType>;
}

export interface OnnxPlan {
  inputName: string;
  /** Logical input dims [N, C, H, W]; unknown (symbolic) sizes as -1. */
  inputDims: number[];
  outputName: string;
  nodes: OnnxNode[];
  consts: Map<string, OnnxConst>;
  opset: number;
  /** Key/value metadata of the file (our writer records arch, input shape and normalization). */
  metadata: Record<string, string>;
}

const DT = onnx.TensorProto.DataType;
const AT = onnx.AttributeProto.AttributeType;
/** Past this many elements a tensor cannot be a weight of a classifier we can run in memory. */
const MAX_ELEMENTS = 2 ** 31;

export function num(v: unknown): number {
  if (typeof v === 'number') return v;
  if (v && typeof (v as { toNumber?: unknown }).toNumber === 'function') return (v as { toNumber(): number }).toNumber();
  return Number(v);
}

function tensorOf(t: onnx.ITensorProto, where: string): OnnxConst {
  const name = t.name || '(unnamed)';
  if (t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL || (t.externalData && t.externalData.length)) {
    throw new InputError(`tensor ${name} keeps its data in an external file, which is not supported: re-export with the weights inside the .onnx file`, where);
  }
  const dims = (t.dims ?? []).map(num);
  let n = 1;
  for (const d of dims) {
    if (!Number.isSafeInteger(d) || d < 0) throw new InputError(`tensor ${name} has an invalid dimension ${d}`, where);
    n *= d;
  }
  if (n > MAX_ELEMENTS) throw new InputError(`tensor ${name} claims ${n} elements`, where);
  const raw = t.rawData && t.rawData.length ? t.rawData : undefined;
  const dt = t.dataType ?? 0;
  const need = (bytes: number) => {
    if (raw && raw.length !== n * bytes) throw new InputError(`tensor ${name} holds ${raw.length} bytes but its shape [${dims}] needs ${n * bytes}`, where);
  };
  const view = raw ? new DataView(raw.buffer, raw.byteOffset, raw.byteLength) : undefined;
  const checkCount = (len: number) => {
    if (len !== n) throw new InputError(`tensor ${name} holds ${len} values but its shape [${dims}] needs ${n}`, where);
  };
  switch (dt) {
    case DT.FLOAT: {
      need(4);
      if (view) return { dims, data: Float32Array.from({ length: n }, (_, i) => view.getFloat32(4 * i, true)) };
      checkCount(t.floatData?.length ?? 0);
      return { dims, data: Float32Array.from(t.floatData!) };
    }
    case DT.DOUBLE: {
      need(8);
      if (view) return { dims, data: Float32Array.from({ length: n }, (_, i) => view.getFloat64(8 * i, true)) };
      checkCount(t.doubleData?.length ?? 0);
      return { dims, data: Float32Array.from(t.doubleData!) };
    }
    case DT.INT64: {
      need(8);
      if (view) return { dims, data: Array.from({ length: n }, (_, i) => Number(view.getBigInt64(8 * i, true))) };
      checkCount(t.int64Data?.length ?? 0);
      return { dims, data: t.int64Data!.map(num) };
    }
    case DT.INT32: {
      need(4);
      if (view) return { dims, data: Array.from({ length: n }, (_, i) => view.getInt32(4 * i, true)) };
      checkCount(t.int32Data?.length ?? 0);
      return { dims, data: t.int32Data!.map(num) };
    }
    default:
      throw new InputError(`tensor ${name} has ONNX data type ${DT[dt] ?? dt}, which is not supported (float, double, int32, int64)`, where);
  }
}

const ATTR_TYPES: Record<number, OnnxAttrType> = { [AT.INT]: 'int', [AT.INTS]: 'ints', [AT.FLOAT]: 'float', [AT.FLOATS]: 'floats', [AT.STRING]: 'string', [AT.TENSOR]: 'tensor' };

function attrOf(a: onnx.IAttributeProto, where: string): OnnxAttr {
  switch (a.type) {
    case AT.INT:
      return num(a.i);
    case AT.INTS:
      return (a.ints ?? []).map(num);
    case AT.FLOAT:
      return a.f ?? 0;
    case AT.FLOATS:
      return a.floats ?? [];
    case AT.STRING:
      return new TextDecoder().decode(a.s ?? new Uint8Array());
    case AT.TENSOR:
      return tensorOf(a.t ?? {}, where);
    default:
      throw new InputError(`attribute ${a.name} has a type (${AT[a.type ?? 0] ?? a.type}) no supported op uses`, where);
  }
}

export function decodeOnnx(bytes: Uint8Array, where: string): OnnxPlan {
  let m: onnx.ModelProto;
  try {
    m = onnx.ModelProto.decode(bytes);
  } catch (e) {
    throw new InputError(`not a valid ONNX file (${(e as Error).message})`, where);
  }
  const g = m.graph;
  if (!g || !g.node || !g.node.length) throw new InputError('not a valid ONNX file (no graph)', where);
  const opset = num((m.opsetImport ?? []).find((o) => !o.domain || o.domain === 'ai.onnx')?.version ?? 0);
  const consts = new Map<string, OnnxConst>();
  for (const t of g.initializer ?? []) consts.set(t.name ?? '', tensorOf(t, where));
  const nodes: OnnxNode[] = [];
  for (const [i, n] of g.node.entries()) {
    if (n.domain && n.domain !== 'ai.onnx') throw new InputError(`unsupported ONNX op ${n.domain}.${n.opType} (node "${n.name || i}")`, where);
    const attrs: Record<string, OnnxAttr> = {};
    const attrTypes: Record<string, OnnxAttrType> = {};
    for (const a of n.attribute ?? []) {
      attrs[a.name ?? ''] = attrOf(a, `${where}: node ${n.name || i}`);
      attrTypes[a.name ?? ''] = ATTR_TYPES[a.type ?? 0];
    }
    nodes.push({ op: n.opType ?? '', name: n.name || `node_${i}`, inputs: n.input ?? [], outputs: n.output ?? [], attrs, attrTypes });
  }
  const inputs = (g.input ?? []).filter((v) => !consts.has(v.name ?? ''));
  if (inputs.length !== 1) throw new InputError(`the graph has ${inputs.length} inputs; an image classifier has one`, where);
  const dimsOf = (v: onnx.IValueInfoProto) => (v.type?.tensorType?.shape?.dim ?? []).map((d) => ((d as { value?: string }).value === 'dimValue' ? num(d.dimValue) : -1));
  const inputDims = dimsOf(inputs[0]);
  if (inputDims.length !== 4) throw new InputError(`the graph input ${inputs[0].name} has rank ${inputDims.length}; an image classifier takes [N, C, H, W]`, where);
  if (!g.output || g.output.length < 1) throw new InputError('the graph has no output', where);
  const metadata: Record<string, string> = {};
  for (const p of m.metadataProps ?? []) if (p.key) metadata[p.key] = p.value ?? '';
  return { inputName: inputs[0].name ?? '', inputDims, outputName: g.output[0].name ?? '', nodes, consts, opset, metadata };
}

export function readOnnx(file: string): OnnxPlan {
  return decodeOnnx(new Uint8Array(fs.readFileSync(file)), file);
}
