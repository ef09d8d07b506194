#!/usr/bin/env bash
# Engine speed at three model sizes, as fractions of the memory-bandwidth roofline: random-weight
# TQ2_0 files of the bitnet-125m, 1bitLLM-700M and BitNet b1.58 2B4T shapes (made by the engine's
# `make_model` example), each run by `tritium bench --bandwidth` (decode bytes per token, weights
# and the KV cache read, × tokens/s against the measured streaming read bandwidth) and, when
# LLAMA_BENCH names llama.cpp's `llama-bench` (see scripts/bench-serve.sh for the build), by it
# too. When BITNET_BENCH names bitnet.cpp's `llama-bench` (scripts/build-bitnet-cpp.sh), the same
# shapes are also written as I2_S and run by tritium and bitnet.cpp. Everything alternates within
# a round, so each comparison sees the same machine state.
#
#   scripts/bench-shapes.sh [ROUNDS]        (files under WORK, default runs/shapes; TG default 64;
#                                            SHAPES default "125m 700m 2b4t")
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
work=${WORK:-runs/shapes}
threads=${THREADS:-2}
tg=${TG:-64}
shapes=${SHAPES:-125m 700m 2b4t}
mkdir -p "$work"
cargo build --release -q -p tritium-cli -p tritium-engine --examples --bins
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads"
for shape in $shapes; do
  [ -f "$work/$shape.gguf" ] || target/release/examples/make_model "$shape" "$work/$shape.gguf"
  if [ -n "${BITNET_BENCH:-}" ] && [ ! -f "$work/$shape-i2s.gguf" ]; then
    target/release/examples/make_model "$shape" "$work/$shape-i2s.gguf" i2_s
  fi
done
# llama-bench's pp and tg rows, prefixed with `name`.
llama_rows() {
  local name=$1 bin=$2 f=$3
  "$bin" -m "$f" -t "$threads" -p 128 -n "$tg" -r 2 -o md 2>"$work/llama-bench.err" |
    grep -E "pp128|tg$tg" | awk -F'|' -v n="$name" '{print "  " n, $(NF-2), $(NF-1)}' ||
    { echo "  $name gave no result on $f:"; tail -3 "$work/llama-bench.err"; }
}
for r in $(seq "$rounds"); do
  for shape in $shapes; do
    f="$work/$shape.gguf"
    echo "== round $r, $shape TQ2_0: tritium"
    target/release/tritium bench "$f" -t "$threads" --pp 128 --tg "$tg" --bandwidth | tail -3
    [ -z "${LLAMA_BENCH:-}" ] || llama_rows llama.cpp "$LLAMA_BENCH" "$f"
    if [ -n "${BITNET_BENCH:-}" ]; then
      f="$work/$shape-i2s.gguf"
      echo "== round $r, $shape I2_S: tritium"
      target/release/tritium bench "$f" -t "$threads" --pp 128 --tg "$tg" --bandwidth | tail -3
      llama_rows bitnet.cpp "$BITNET_BENCH" "$f"
    fi
  done
done
