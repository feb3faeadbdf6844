/**
 * A `seed` graph (ort_grad_graph.ts) cut into a forward and a backward part, run as two ONNX Runtime sessions
 * (ort_graph.ts: forward() then backward()): a caller that needs the logits to compute its seed runs each
 * image forward once instead of twice.
 */
import { onnx } from 'onnx-proto';

const T = onnx.TensorProto.DataType;

/** The element type of a node's output, for declaring it as a graph output (the builder tracks shapes only). */
export function outputElemType(node: onnx.INodeProto, index: number): number {
  switch (node.opType) {
    case 'MaxPool':
      return index === 1 ? T.INT64 : T.FLOAT;
    case 'Shape':
    case 'Size':
      return T.INT64;
    case 'Greater':
    case 'Less':
    case 'Equal':
      return T.BOOL;
    case 'Cast':
      return Number(node.attribute?.find((a) => a.name === 'to')?.i ?? T.FLOAT);
    default:
      return T.FLOAT;
  }
}

/**
 * Cut a `seed` graph in two: the forward part is every node the forward outputs (logits, taps, statistics)
 * depend on; the backward part is every other node. What a backward node reads from a forward node becomes an
 * output of the first part and an input of the second (`saved`); graph inputs and initializers go to whichever
 * part reads them. Nodes are already in topological order, so each part keeps it.
 */
export function splitForwardBackward(graph: onnx.GraphProto): { forward: onnx.IGraphProto; backward: onnx.IGraphProto; saved: string[] } {
  const nodes = graph.node;
  const producer = new Map<string, { node: number; index: number }>();
  nodes.forEach((nd, i) => (nd.output ?? []).forEach((o, j) => producer.set(o, { node: i, index: j })));
  const isForwardOutput = (name: string) => !name.startsWith('grad/');
  const inForward = new Set<number>();
  const stack = graph.output.filter((o) => isForwardOutput(o.name!)).map((o) => o.name!);
  while (stack.length) {
    const p = producer.get(stack.pop()!);
    if (!p || inForward.has(p.node)) continue;
    inForward.add(p.node);
    for (const i of nodes[p.node].input ?? []) if (i) stack.push(i);
  }
  const forwardNodes = nodes.filter((_, i) => inForward.has(i));
  const backwardNodes = nodes.filter((_, i) => !inForward.has(i));
  const readBy = (part: onnx.INodeProto[]) => new Set(part.flatMap((nd) => (nd.input ?? []).filter((i) => i)));
  const forwardReads = readBy(forwardNodes);
  const backwardReads = readBy(backwardNodes);
  const saved = [...backwardReads].filter((name) => {
    const p = producer.get(name);
    return p !== undefined && inForward.has(p.node);
  });
  const shapeless = (name: string, elemType: number) => onnx.ValueInfoProto.create({ name, type: { tensorType: { elemType } } });
  const savedInfo = saved.map((name) => {
    const p = producer.get(name)!;
    return shapeless(name, outputElemType(nodes[p.node], p.index));
  });
  return {
    forward: {
      name: `${graph.name}-forward`,
      node: forwardNodes,
      initializer: graph.initializer.filter((t) => forwardReads.has(t.name!)),
      input: graph.input.filter((v) => forwardReads.has(v.name!)),
      output: [...graph.output.filter((o) => isForwardOutput(o.name!)), ...savedInfo],
    },
    backward: {
      name: `${graph.name}-backward`,
      node: backwardNodes,
      initializer: graph.initializer.filter((t) => backwardReads.has(t.name!)),
      input: [...graph.input.filter((v) => backwardReads.has(v.name!)), ...savedInfo],
      output: graph.output.filter((o) => !isForwardOutput(o.name!)),
    },
    saved,
  };
}
