#!/usr/bin/env node
// Builds self-contained, platform-specific .vsix files: `node scripts/package-vsix.js` for this machine's
// target, `--all` for every target, or the targets named (`linux-x64 win32-x64`). An installed extension has no
// node_modules, so each package carries, beside the bundles, the wasm binaries and the embedded digits that the
// build puts in dist/, and ONNX Runtime (onnxruntime-node and onnxruntime-common, JavaScript plus this target's
// native binaries only) in dist/node_modules, where the bundles' require('onnxruntime-node') finds it, and the
// webgpu package (Dawn) with this target's dawn.node only (the npm package carries all five platforms' binaries,
// about 130 MB; one is 12 to 22 MB), where src/engine/backend/webgpu.ts finds it.
// onnxruntime-node ships no darwin-x64 binary: that package evaluates and trains on WebAssembly, as the log says.
// Run `node esbuild.js --production` first (npm run package does). `--stage [target]` stages dist/node_modules
// only, and leaves it there.
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const root = path.join(__dirname, '..');
const dist = path.join(root, 'dist');
const staged = path.join(dist, 'node_modules');
const ALL = ['linux-x64', 'linux-arm64', 'darwin-arm64', 'darwin-x64', 'win32-x64', 'win32-arm64'];

function copyDir(from, to, keep = () => true) {
  fs.mkdirSync(to, { recursive: true });
  for (const e of fs.readdirSync(from, { withFileTypes: true })) {
    const src = path.join(from, e.name);
    const dst = path.join(to, e.name);
    if (e.isDirectory()) copyDir(src, dst, keep);
    else if (keep(src)) fs.copyFileSync(src, dst);
  }
}

/** dist/node_modules with ONNX Runtime for one target; false when the package has no binary for it. */
function stageOnnxRuntime(target) {
  fs.rmSync(staged, { recursive: true, force: true });
  const [os, arch] = target.split('-');
  const ort = path.dirname(require.resolve('onnxruntime-node/package.json', { paths: [root] }));
  const bin = path.join(ort, 'bin', 'napi-v6', os, arch);
  if (!fs.existsSync(path.join(bin, 'onnxruntime_binding.node'))) return false;
  // onnxruntime-common exports no package.json: from its entry up to the folder that holds its own.
  let common = path.dirname(require.resolve('onnxruntime-common', { paths: [ort] }));
  const named = (d) => fs.existsSync(path.join(d, 'package.json')) && JSON.parse(fs.readFileSync(path.join(d, 'package.json'), 'utf8')).name === 'onnxruntime-common';
  while (!named(common)) common = path.dirname(common);
  const jsOnly = (f) => f.endsWith('.js') || f.endsWith('.json');
  const dOrt = path.join(staged, 'onnxruntime-node');
  fs.mkdirSync(dOrt, { recursive: true });
  fs.copyFileSync(path.join(ort, 'package.json'), path.join(dOrt, 'package.json'));
  copyDir(path.join(ort, 'dist'), path.join(dOrt, 'dist'), jsOnly);
  copyDir(bin, path.join(dOrt, 'bin', 'napi-v6', os, arch));
  const dCommon = path.join(staged, 'onnxruntime-common');
  fs.mkdirSync(dCommon, { recursive: true });
  fs.copyFileSync(path.join(common, 'package.json'), path.join(dCommon, 'package.json'));
  copyDir(path.join(common, 'dist', 'cjs'), path.join(dCommon, 'dist', 'cjs'), jsOnly);
  for (const f of ['LICENSE', 'ThirdPartyNotices.txt']) {
    if (fs.existsSync(path.join(ort, f))) fs.copyFileSync(path.join(ort, f), path.join(dOrt, f));
  }
  return true;
}

/** dist/node_modules/webgpu with this target's Dawn binary (and its DLLs on Windows); false when there is none. */
function stageWebGpu(target) {
  let pkg;
  try {
    pkg = path.dirname(require.resolve('webgpu/package.json', { paths: [root] }));
  } catch {
    return false; // an optional dependency: a build without it packages the CPU and CUDA paths only
  }
  const [os, arch] = target.split('-');
  // One universal binary serves both macOS targets (the package's own index.js makes the same choice).
  const dir = os === 'darwin' ? 'darwin-universal' : `${os}-${arch}`;
  if (!fs.existsSync(path.join(pkg, 'dist', dir, 'dawn.node'))) return false;
  const d = path.join(staged, 'webgpu');
  fs.mkdirSync(d, { recursive: true });
  for (const f of ['package.json', 'index.js', 'LICENSE.md']) {
    if (fs.existsSync(path.join(pkg, f))) fs.copyFileSync(path.join(pkg, f), path.join(d, f));
  }
  copyDir(path.join(pkg, 'dist', dir), path.join(d, 'dist', dir));
  return true;
}

function main() {
  const args = process.argv.slice(2);
  // --stage TARGET: only put the target's native packages in dist/node_modules and keep them there, for running
  // the bundles on a machine without node_modules (scripts/gpu-check.sh).
  // --without-onnxruntime leaves ONNX Runtime out (46 MB on linux-x64); --without-webgpu leaves the webgpu
  // package's Dawn out (21 MB on linux-x64; ONNX Runtime's WebGPU provider carries its own).
  if (args[0] === '--stage') {
    const t = args.slice(1).find((a) => !a.startsWith('-')) ?? `${process.platform}-${process.arch}`;
    if (!ALL.includes(t)) throw new Error(`unknown target ${t} (one of ${ALL.join(', ')})`);
    fs.rmSync(staged, { recursive: true, force: true });
    const ort = !args.includes('--without-onnxruntime') && stageOnnxRuntime(t);
    const webgpu = !args.includes('--without-webgpu') && stageWebGpu(t);
    process.stdout.write(`dist/node_modules for ${t}: ONNX Runtime ${ort ? 'staged' : 'absent'}, webgpu ${webgpu ? 'staged' : 'absent'}\n`);
    return;
  }
  const host = `${process.platform}-${process.arch}`;
  const targets = args.includes('--all') ? ALL : args.filter((a) => !a.startsWith('-')).length ? args.filter((a) => !a.startsWith('-')) : [host];
  for (const t of targets) if (!ALL.includes(t)) throw new Error(`unknown target ${t} (one of ${ALL.join(', ')})`);
  for (const f of ['job-process.js', 'cli.js', 'extension.js', 'cell-worker.js', 'mnist-digits/0.json', 'demo/victim.safetensors', 'tfjs-backend-wasm-simd.wasm']) {
    if (!fs.existsSync(path.join(dist, f))) throw new Error(`dist/${f} is missing: run node esbuild.js --production first`);
  }
  const version = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version;
  const vsce = path.join(root, 'node_modules', '@vscode', 'vsce', 'vsce');
  try {
    for (const t of targets) {
      const ort = stageOnnxRuntime(t);
      const webgpu = stageWebGpu(t);
      const out = path.join(root, `backdoor-audit-${t}-${version}.vsix`);
      execFileSync(
        process.execPath,
        [vsce, 'package', '--target', t, '--no-dependencies', '--skip-license', '--allow-missing-repository', '--no-rewrite-relative-links', '--out', out],
        { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] },
      );
      const mb = (fs.statSync(out).size / 1e6).toFixed(1);
      const notes = [ort ? '' : 'no ONNX Runtime binary for this target: WebAssembly only', webgpu ? '' : 'no WebGPU (Dawn) binary for this target'].filter(Boolean);
      process.stdout.write(`${path.basename(out)}: ${mb} MB${notes.length ? ` (${notes.join('; ')})` : ''}\n`);
    }
  } finally {
    fs.rmSync(staged, { recursive: true, force: true });
  }
}

try {
  main();
} catch (e) {
  process.stderr.write(`error: ${e.message.split('\n')[0]} (scripts/package-vsix.js)\n`);
  process.exit(e.status ? 1 : 2);
}
