#!/usr/bin/env bash
# A sharded sweep on one machine: N shards of a job as parallel processes, then one merge. The same two steps a
# cluster runs (see slurm.sbatch and k8s-indexed-job.yaml), useful to check a job before submitting it.
# Usage: examples/sweep/local.sh <audit.json> <out-dir> [shards, default 2]
set -euo pipefail
JOB="$1"; OUT="$2"; N="${3:-2}"
CLI="${BACKDOOR_AUDIT:-node $(cd "$(dirname "$0")/../.." && pwd)/dist/cli.js}"
pids=()
for i in $(seq 1 "$N"); do
  $CLI run "$JOB" --out "$OUT/shard-$i" --shard "$i/$N" >"$OUT.shard-$i.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
if [ "$status" != 0 ]; then echo "a shard failed; see $OUT.shard-*.log" >&2; exit 1; fi
$CLI merge "$OUT"/shard-* --out "$OUT/merged"
