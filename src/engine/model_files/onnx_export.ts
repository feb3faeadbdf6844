/**
 * ONNX writer: the module graph as ONNX nodes (opset 13, NCHW like PyTorch's export), weights as
 * initializers in PyTorch layout under their state_dict names. A module inserted into the graph after
 * building (NPD's polarizer) becomes ordinary nodes in front of the module it precedes. The graph takes what
 * the source model takes: normalized NCHW input named `input`, `logits` out; with `includeNormalization` it
 * takes [0,1] pixels and applies the model's normalization itself (what an evaluator that feeds raw pixels
 * needs).
 */
import { onnx } from 'onnx-proto';
import type { Model } from '../nn/model';
import { emitModule } from '../nn/onnx_emit';
import { ONNX_OPSET, OnnxBuilder } from '../formats/onnx_builder';
import { writeFileAtomic } from '../util/atomic';
import { HostValues } from '../nn/read';

export interface ExportOptions {
  /** Input is [0,1] pixels and the graph normalizes (default false: the graph takes normalized input). */
  includeNormalization?: boolean;
  /** Fixed batch size; default a symbolic batch dimension `N`. */
  batch?: number;
}

function valueInfo(name: string, shape: number[]): onnx.IValueInfoProto {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType: onnx.TensorProto.DataType.FLOAT,
        shape: { dim: shape.map((d) => (d < 0 ? { dimParam: 'N' } : { dimValue: d })) },
      },
    },
  });
}

/** The model as an ONNX file's bytes. */
export async function exportOnnx(model: Model, opts: ExportOptions = {}): Promise<Uint8Array> {
  // Every weight is read first: the emission below is synchronous.
  const hv = await HostValues.of(model.root);
  const b = new OnnxBuilder();
  const [h, w, c] = model.inputShape;
  const n = opts.batch ?? -1;
  // An imported graph keeps its own input and output names.
  const io = (model.root as unknown as { onnxIo?: { input: string; output: string } }).onnxIo ?? { input: 'input', output: 'logits' };
  b.reserve(io.input);
  b.reserve(io.output);
  b.shapes.set(io.input, [n, c, h, w]);
  let x = io.input;
  if (opts.includeNormalization && model.normalize) {
    const { mean, std } = model.normalize;
    const per = (v: number[]) => Float32Array.from({ length: c }, (_, i) => v[v.length === 1 ? 0 : i]);
    x = b.node('Sub', [x, b.initializer('normalize.mean', [1, c, 1, 1], per(mean))], {}, 'normalize/Sub', [n, c, h, w]);
    x = b.node('Div', [x, b.initializer('normalize.std', [1, c, 1, 1], per(std))], {}, 'normalize/Div', [n, c, h, w]);
  }
  const y = emitModule(b, hv, model.root, x);
  const outShape = b.shape(y);
  if (outShape.length !== 2 || outShape[1] !== model.numClasses) throw new Error(`ONNX export: output shape [${outShape}] is not [N, ${model.numClasses}]`);
  // Name the graph's output: rename the producing node's output (or add an Identity).
  const producer = b.nodes.find((nd) => nd.output?.[0] === y);
  if (producer) {
    producer.output = [io.output, ...producer.output!.slice(1)];
    for (const nd of b.nodes) nd.input = nd.input!.map((i) => (i === y ? io.output : i));
  } else b.node('Identity', [y], {}, `${io.output}/Identity`, outShape, [io.output]);
  const graph = onnx.GraphProto.create({
    name: model.spec.arch,
    node: b.nodes,
    initializer: b.initializers,
    input: [valueInfo(io.input, [n, c, h, w])],
    output: [valueInfo(io.output, [n, model.numClasses])],
  });
  const proto = onnx.ModelProto.create({
    irVersion: 7,
    opsetImport: [{ domain: '', version: ONNX_OPSET }],
    producerName: 'backdoor-audit',
    graph,
    metadataProps: [
      { key: 'backdoor-audit.arch', value: model.spec.arch },
      { key: 'backdoor-audit.inputShape', value: JSON.stringify(model.spec.inputShape) },
      { key: 'backdoor-audit.normalize', value: JSON.stringify(opts.includeNormalization ? null : (model.normalize ?? null)) },
    ],
  });
  return onnx.ModelProto.encode(proto).finish();
}

export async function writeOnnx(model: Model, file: string, opts: ExportOptions = {}): Promise<void> {
  writeFileAtomic(file, await exportOnnx(model, opts));
}
