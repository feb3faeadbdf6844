#!/usr/bin/env bash
# The FT job against PyTorch's, alternated: our `run` of a one-defense job (FT with BackdoorBench's recipe: 10
# epochs, batch 128, the paper profile) on a zoo victim, then PyTorch's reference of the same recipe on the same
# images with the victim evaluated before and after, as our job does; ROUNDS times, one line a round.
#
#   npm run build && bash scripts/ft-job-vs-pytorch.sh [ROUNDS] [VICTIM]     (defaults: 3, preact-badnets)
#
# Needs the victim trained (`/usr/bin/python3 scripts/zoo/train_victims.py --only VICTIM`) and Debian's
# python3-torch. Ratio = PyTorch's seconds / ours (above 1: ours is faster). Single rounds move by 10-15% with
# the machine's hour; the last line gives the medians of both sides and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
victim=${2:-preact-badnets}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npx tsx -e "
const { purificationJob } = require('./src/engine/bench_purify');
const job = purificationJob('zoo/$victim', [{ name: 'ft', profile: 'paper', params: { epochs: 10, batchSize: 128 } }]);
require('fs').writeFileSync('$work/ft.json', JSON.stringify(job));
"
seconds() { local s e; s=$(date +%s.%N); "$@" > "$work/last.log" 2>&1 || { cat "$work/last.log" >&2; return 1; }; e=$(date +%s.%N); awk "BEGIN { print $e - $s }"; }
for i in $(seq 1 "$rounds"); do
  ours=$(seconds node dist/cli.js run "$work/ft.json" --overwrite --out "$work/out")
  torch=$(seconds env MALLOC_MMAP_THRESHOLD_=2000000000 MALLOC_TRIM_THRESHOLD_=2000000000 GLIBC_TUNABLES=glibc.malloc.hugetlb=1 \
    /usr/bin/python3 scripts/zoo/reference_defenses.py --victim "$victim" --defense ft --epochs 10 --batch-size 128 \
    --cos-tmax 10 --threads 2 --seeds 0 --evaluate-victim --out "$work/ref.json")
  printf 'round %d: ours %.2f s, PyTorch %.2f s, ratio %.3f\n' "$i" "$ours" "$torch" "$(awk "BEGIN { print $torch / $ours }")"
  echo "$ours" >> "$work/ours.txt"
  echo "$torch" >> "$work/torch.txt"
done
median() { sort -g "$1" | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
mo=$(median "$work/ours.txt")
mt=$(median "$work/torch.txt")
printf 'medians over %d rounds: ours %.2f s, PyTorch %.2f s, ratio %.3f\n' "$rounds" "$mo" "$mt" "$(awk "BEGIN { print $mt / $mo }")"
