/**
 * Training graphs (ort_grad_graph.ts) kept by the structure of the model they were built for. Building the
 * graph of the zoo's width-16 PreAct-ResNet18 takes 120-150 ms of JavaScript, and every trainer of a clone of the
 * same victim builds the very same bytes: the graph depends on the modules, their settings and the parameters'
 * shapes, never on the weights (they are fed at every step). A cell process therefore builds the victim's graph
 * while it waits for its first cell (cell_worker.ts), and the trainers of its cells take it from here.
 *
 * The key is the model's structure as the builder reads it: the architecture spec, the normalization, and for
 * every module its kind, path, settings (numbers, strings, booleans and arrays of them), BatchNorm mask and
 * parameters (name, shape, trainable). A module holding anything else (an imported node's attributes, say) may
 * hold something the graph depends on that the key would miss: such a model is never cached.
 */
import * as tf from '@tensorflow/tfjs-core';
import { buildGradGraph } from './ort_grad_graph';
import type { GradGraph, GradGraphOptions } from './ort_grad_contract';
import { Module } from './module';
import type { Model } from './model';

/** Graphs kept at most: a cell's trainers use one or two forms of one model. */
const KEEP = 4;

const graphs = new Map<string, GradGraph>();

function isPlain(v: unknown): boolean {
  return v === undefined || v === null || typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean';
}

/** The model's structure as a string, or undefined where a module holds state the key cannot vouch for. */
export function structureKey(model: Pick<Model, 'spec' | 'normalize' | 'root'>): string | undefined {
  const modules: unknown[] = [];
  for (const m of model.root.modules()) {
    const settings: Record<string, unknown> = {};
    for (const [name, v] of Object.entries(m)) {
      if (name === 'children' || name === 'params' || name === 'inserted') continue; // walked below and by modules()
      if (isPlain(v)) settings[name] = v;
      else if (Array.isArray(v) && v.every(isPlain)) settings[name] = v;
      else if (v instanceof tf.Tensor) settings[name] = name === 'mask' ? 'mask' : undefined; // weights and buffers: fed, not built in
      else if (!(v instanceof Module)) return undefined;
    }
    modules.push([m.constructor.name, settings, [...m.params].map(([name, p]) => [name, p.variable.shape, p.trainable])]);
  }
  return JSON.stringify([model.spec, model.normalize ?? null, modules]);
}

/**
 * The graph of `model` in form `o`: one built earlier for a model of the same structure, else built now (and
 * kept). Throws as buildGradGraph does (OrtGradUnsupported) for models it does not cover.
 */
export function gradGraphFor(model: Model, o: GradGraphOptions): GradGraph {
  const structure = structureKey(model);
  if (structure === undefined) return buildGradGraph(model, o);
  const key = `${JSON.stringify(o)}\u0000${structure}`;
  const kept = graphs.get(key);
  if (kept) {
    // Most recently used last: the first entry is the one to drop.
    graphs.delete(key);
    graphs.set(key, kept);
    return kept;
  }
  const graph = buildGradGraph(model, o);
  graphs.set(key, graph);
  if (graphs.size > KEEP) graphs.delete(graphs.keys().next().value!);
  return graph;
}
