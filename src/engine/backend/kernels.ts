/** Training kernels the wasm backend lacks or runs slowly; registered before the backend is set. */
export function registerWasmTrainingKernels(): void {
  // Filled in by conv2d_backprop_filter.ts and conv2d_backprop_input.ts.
}
