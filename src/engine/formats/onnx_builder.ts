/**
 * The one ONNX graph builder: nodes, initializers and the NCHW shape of every tensor, on onnx-proto alone. The
 * model exporter (model_files/onnx_export.ts), the training graph (nn/ort_grad_graph.ts) and the module
 * emitter (nn/onnx_emit.ts) all write through it, so attribute encoding and name allocation exist once.
 */
import { onnx } from 'onnx-proto';

export const ONNX_OPSET = 13;
const AT = onnx.AttributeProto.AttributeType;

/** An attribute: number = INT, number[] = INTS, string = STRING; floats are marked. */
export type AttrValue = number | number[] | string | { float: number } | { floats: number[] };

/** Builds one ONNX graph; tracks every tensor's NCHW shape (batch as -1) for ops that need it. */
export class OnnxBuilder {
  readonly nodes: onnx.INodeProto[] = [];
  readonly initializers: onnx.ITensorProto[] = [];
  readonly shapes = new Map<string, number[]>();
  private readonly used = new Set<string>();

  /** A tensor or node name not used yet, based on `base`. */
  fresh(base: string): string {
    let name = base;
    for (let i = 1; this.used.has(name); i++) name = `${base}_${i}`;
    this.used.add(name);
    return name;
  }

  reserve(name: string): void {
    this.used.add(name);
  }

  initializer(name: string, shape: readonly number[], data: Float32Array | BigInt64Array): string {
    const n = this.fresh(name);
    const raw = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
    this.initializers.push(
      onnx.TensorProto.create({ name: n, dims: [...shape], dataType: data instanceof Float32Array ? onnx.TensorProto.DataType.FLOAT : onnx.TensorProto.DataType.INT64, rawData: raw }),
    );
    this.shapes.set(n, [...shape]);
    return n;
  }

  int64s(name: string, values: number[]): string {
    return this.initializer(name, [values.length], BigInt64Array.from(values.map((v) => BigInt(v))));
  }

  /** Add a node; returns its output names (fresh, based on the node name). */
  node(op: string, inputs: string[], attrs: Record<string, AttrValue>, name: string, outShape: number[], outputs?: string[]): string {
    const nodeName = this.fresh(name);
    const out = outputs ?? [this.fresh(`${nodeName}_output`)];
    const attribute = Object.entries(attrs).map(([k, v]) => {
      if (typeof v === 'number') return onnx.AttributeProto.create({ name: k, type: AT.INT, i: v });
      if (typeof v === 'string') return onnx.AttributeProto.create({ name: k, type: AT.STRING, s: new TextEncoder().encode(v) });
      if (Array.isArray(v)) return onnx.AttributeProto.create({ name: k, type: AT.INTS, ints: v });
      if ('floats' in v) return onnx.AttributeProto.create({ name: k, type: AT.FLOATS, floats: v.floats });
      return onnx.AttributeProto.create({ name: k, type: AT.FLOAT, f: v.float });
    });
    this.nodes.push(onnx.NodeProto.create({ name: nodeName, opType: op, input: inputs, output: out, attribute }));
    this.shapes.set(out[0], outShape);
    return out[0];
  }

  shape(t: string): number[] {
    const s = this.shapes.get(t);
    if (!s) throw new Error(`ONNX export: no shape for ${t}`);
    return s;
  }
}
