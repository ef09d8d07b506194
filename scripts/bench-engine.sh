#!/usr/bin/env bash
# Inference speed, tritium's engine against llama.cpp (llama-cpp-python) on the same GGUF, rounds
# alternating so both see the same machine state.
#
#   scripts/bench-engine.sh [FILE.gguf] [ROUNDS]
#
# Without FILE, makes the anchor's random-weight bitnet-125m TQ2_0 file (F16 embedding). Needs a
# release build, PY pointing at a Python with llama-cpp-python and gguf (default: python3) and
# ANCHORS at the anchor scripts (default: ../shared/anchors). 2 threads, pp 128, tg 128, 3 reps per
# round, like anchors/RESULTS.md. LLAMA_BENCH=/path/to/llama-bench runs llama.cpp's own benchmark
# instead of llama-cpp-python. tritium runs with its default f32 KV cache and with f16 (llama.cpp's).
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
  if [ -n "${LLAMA_BENCH:-}" ]; then
    # llama.cpp's own llama-bench (see scripts/bench-serve.sh for a build): the prompt from an
    # empty cache, then 128 tokens decoded after 128 positions (-d), as tritium bench runs them.
    echo "== round $r: llama-bench (f16 KV cache, its default)"
    "$LLAMA_BENCH" -m "$file" -t "$THREADS" -p 128 -n 0 -r 3 -o md 2> /dev/null | grep pp128
    "$LLAMA_BENCH" -m "$file" -t "$THREADS" -p 0 -n 128 -d 128 -r 3 -o md 2> /dev/null | grep tg128
  else
    echo "== round $r: llama.cpp"
    $PY $ANCHORS/llama_cpp_bench.py "$file" --threads "$THREADS" --pp 128 --tg 128 --reps 3 | grep RESULT |
      $PY -c "import sys, json; d = json.loads(sys.stdin.read().split('RESULT ', 1)[1]); print(f\"llama.cpp pp128 {d['pp_tok_s']['median']:.1f} tok/s  tg128 {d['tg_tok_s']['median']:.1f} tok/s  peak RSS {d['peak_rss_mib']:.0f} MiB\")"
  fi
  for kv in f32 f16; do
    echo "== round $r: tritium (--kv-cache $kv)"
    target/release/tritium bench "$file" --threads "$THREADS" --pp 128 --tg 128 --reps 3 --kv-cache $kv
  done
done
