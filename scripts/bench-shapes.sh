#!/usr/bin/env bash
# Engine speed at three model sizes, as fractions of the memory-bandwidth roofline: random-weight
# TQ2_0 files of the bitnet-125m, 1bitLLM-700M and BitNet b1.58 2B4T shapes (made by the engine's
# `make_model` example), each run by `tritium bench --bandwidth` (decode bytes per token × tokens/s
# against the measured streaming read bandwidth) and, when LLAMA_BENCH names llama.cpp's
# `llama-bench` (see scripts/bench-serve.sh for the build), by it too, alternating within a round.
#
#   scripts/bench-shapes.sh [ROUNDS]        (files under WORK, default runs/shapes)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
work=${WORK:-runs/shapes}
threads=${THREADS:-2}
mkdir -p "$work"
cargo build --release -q -p tritium-cli -p tritium-engine --examples --bins
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads"
for shape in 125m 700m 2b4t; do
  [ -f "$work/$shape.gguf" ] || target/release/examples/make_model "$shape" "$work/$shape.gguf"
done
for r in $(seq "$rounds"); do
  for shape in 125m 700m 2b4t; do
    f="$work/$shape.gguf"
    echo "== round $r, $shape: tritium"
    target/release/tritium bench "$f" -t "$threads" --pp 128 --tg 64 --bandwidth | tail -3
    if [ -n "${LLAMA_BENCH:-}" ]; then
      echo "== round $r, $shape: llama.cpp"
      "$LLAMA_BENCH" -m "$f" -t "$threads" -p 128 -n 64 -r 2 -o md 2>"$work/llama-bench.err" |
        grep -E "pp128|tg64" || { echo "llama-bench gave no result on $f:"; tail -3 "$work/llama-bench.err"; }
    fi
  done
done
