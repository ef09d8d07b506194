#!/usr/bin/env bash
# Inference speed, tritium's engine against llama.cpp (llama-cpp-python) on the same GGUF, rounds
# alternating so both see the same machine state.
#
#   scripts/bench-engine.sh [FILE.gguf] [ROUNDS]
#
# Without FILE, makes the anchor's random-weight bitnet-125m TQ2_0 file (F16 embedding). Needs a
# release build, PY pointing at a Python with llama-cpp-python and gguf (default: python3) and
# ANCHORS at the anchor scripts (default: ../shared/anchors). 2 threads, pp 128, tg 128, 3 reps per
# round, like anchors/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
ANCHORS=${ANCHORS:-../shared/anchors}
THREADS=${THREADS:-2}
file=${1:-}
rounds=${2:-3}
if [ -z "$file" ]; then
  file=runs/bench-125m-tq2_0.gguf
  [ -f "$file" ] || $PY $ANCHORS/make_bitnet_gguf.py --config 125m --wtype tq2_0 --out "$file"
fi
for r in $(seq "$rounds"); do
  echo "== round $r: llama.cpp"
  $PY $ANCHORS/llama_cpp_bench.py "$file" --threads "$THREADS" --pp 128 --tg 128 --reps 3 | grep RESULT |
    $PY -c "import sys, json; d = json.loads(sys.stdin.read().split('RESULT ', 1)[1]); print(f\"llama.cpp pp128 {d['pp_tok_s']['median']:.1f} tok/s  tg128 {d['tg_tok_s']['median']:.1f} tok/s  peak RSS {d['peak_rss_mib']:.0f} MiB\")"
  echo "== round $r: tritium"
  target/release/tritium bench "$file" --threads "$THREADS" --pp 128 --tg 128 --reps 3
done
