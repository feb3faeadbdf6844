#!/usr/bin/env bash
# The GPU check, for a GPU machine without network or node_modules: what the machine offers (doctor --json),
# the GPU benchmark (bench --device gpu, model throughputs only) and one small purification on the GPU (the
# demo's BadNets victim, ft for 2 epochs on 200 unseen digits, device gpu: no fallback). It runs the production
# bundles and the target's ONNX Runtime, whose WebGPU provider is the GPU path that runs whole jobs (it carries
# its own Dawn), with the Vulkan loader from Debian's libvulkan1 beside it for a machine that lacks one (the GPU
# driver's own Vulkan support must be there).
#
#   scripts/gpu-check.sh prepare [DIR]   here, with node_modules: build, stage linux-x64's ONNX Runtime, copy
#                                        what the check needs into DIR (default scratch/gpu-check, 74 MB) and
#                                        pack it as DIR.tar.gz (23 MB: what a machine with a 64 MB carry takes;
#                                        there: mkdir c && tar xzf gpu-check.tar.gz -C c && c/gpu-check.sh run c)
#   scripts/gpu-check.sh run [DIR [OUT]] there, with Node >= 20 and the GPU driver (Vulkan on Linux): writes
#                                        OUT/doctor.json, OUT/bench.json, OUT/purify/results.json (default
#                                        OUT = DIR/out); exit 0 only when all three ran on a GPU backend
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
mode="${1:-run}"
dir="${2:-$here/scratch/gpu-check}"

if [ "$mode" = prepare ]; then
  target="${TARGET:-linux-x64}"
  cd "$here"
  npm run build:production >/dev/null
  # ONNX Runtime (46 MB) carries the GPU path; the webgpu package's Dawn (21 MB) would not fit beside it in 64 MB.
  node scripts/package-vsix.js --stage "$target" --without-webgpu
  rm -rf "$dir" && mkdir -p "$dir/lib"
  cp dist/cli.js dist/job-process.js dist/cell-worker.js dist/train-worker.js dist/*.wasm "$dir/"
  cp -r dist/mnist-digits dist/demo dist/node_modules "$dir/"
  cp scripts/gpu-check.sh "$dir/"
  rm -rf dist/node_modules
  # The Vulkan loader (about 0.5 MB), used there only when the machine has none.
  deb="$(mktemp -d)"
  if (cd "$deb" && apt-get download libvulkan1 >/dev/null 2>&1); then
    dpkg-deb -x "$deb"/libvulkan1_*.deb "$deb/x" && cp -L "$deb"/x/usr/lib/*/libvulkan.so.1 "$dir/lib/"
  else
    echo "note: libvulkan1 could not be downloaded; the GPU machine must have its own Vulkan loader" >&2
  fi
  rm -rf "$deb"
  tar czf "$dir.tar.gz" -C "$dir" .
  du -sh "$dir" "$dir.tar.gz"
  exit 0
fi

[ "$mode" = run ] || { echo "usage: $0 prepare|run [DIR [OUT]]" >&2; exit 2; }
# Run from inside the prepared folder (scripts/gpu-check.sh copied there) as well as from the repository.
[ -f "$dir/cli.js" ] || dir="$(cd "$(dirname "$0")" && pwd)"
[ -f "$dir/cli.js" ] || { echo "error: no cli.js in $dir: run $0 prepare first" >&2; exit 2; }
out="${3:-$dir/out}"
mkdir -p "$out"
# The carried Vulkan loader, where the machine has none of its own.
if [ -f "$dir/lib/libvulkan.so.1" ] && ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1 '; then
  export LD_LIBRARY_PATH="$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
cli="$dir/cli.js"
status=0

echo "== doctor"
node "$cli" doctor --json >"$out/doctor.json" || status=1
node "$cli" doctor || true
gpu_plan="$(node -e 'const p=require(process.argv[1]).plan.gpu; console.log(p.error ? "none" : p.training + (p.steps ? " (steps on " + p.steps + ")" : ""))' "$out/doctor.json")"
echo "device gpu plan: $gpu_plan"

echo "== bench --device gpu"
if ! timeout 900 node "$cli" bench --device gpu --no-demo --no-purification --json "$out/bench.json"; then
  echo "bench --device gpu failed" >&2
  status=1
fi

echo "== purify (ft, 2 epochs, device gpu)"
job="$out/purify.audit.json"
cat >"$job" <<JSON
{
  "model": "$dir/demo/victim.safetensors",
  "data": { "test": { "format": "mnist-embedded" } },
  "attack": { "type": "badnets", "target": 0, "size": 3, "offset": 0 },
  "aux": [{ "name": "unseen", "type": "unseen", "source": { "format": "mnist-embedded" }, "size": 200 }],
  "defenses": [{ "name": "ft", "params": { "epochs": 2 } }],
  "embedding": { "method": "none" },
  "device": "gpu"
}
JSON
if timeout 900 node "$cli" run "$job" --out "$out/purify" --overwrite; then
  node -e '
    const r = require(process.argv[1]);
    const row = r.rows[0] || {};
    console.log(`purify: backend ${r.backend.name}${r.backend.adapter ? " on " + r.backend.adapter : ""}, evaluation ${r.backend.evaluation}; baseline ACC ${r.baseline.acc} ASR ${r.baseline.asr}; ft ACC ${row.acc} ASR ${row.asr} in ${row.seconds} s`);
    if (r.backend.name !== "webgpu" && r.backend.name !== "tensorflow-gpu" && r.backend.evaluation !== "onnxruntime-webgpu") process.exit(1);
  ' "$out/purify/results.json" || status=1
else
  echo "purify on the GPU failed" >&2
  status=1
fi
exit $status
