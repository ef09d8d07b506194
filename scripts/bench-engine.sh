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
# The last lines give tritium (f16 cache) over llama.cpp round by round, and their median.
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
# Each round's figures, llama.cpp's and tritium's with the f16 cache (llama.cpp's), for the ratios
# printed at the end: "pp tg" per line.
theirs=() ours=()
# The last cell of a llama-bench row: "| 851.74 ± 57.44 |".
cell() { awk -F'|' '{ split($(NF - 1), v, " "); print v[1] }'; }
for r in $(seq "$rounds"); do
  if [ -n "${LLAMA_BENCH:-}" ]; then
    echo "== round $r: llama-bench (f16 KV cache, its default)"
    pp=$("$LLAMA_BENCH" -m "$file" -t "$THREADS" -p 128 -n 0 -r 3 -o md 2> /dev/null | grep pp128)
    tg=$("$LLAMA_BENCH" -m "$file" -t "$THREADS" -p 0 -n 128 -d 128 -r 3 -o md 2> /dev/null | grep tg128)
    printf '%s\n%s\n' "$pp" "$tg"
    theirs+=("$(echo "$pp" | cell) $(echo "$tg" | cell)")
  else
    echo "== round $r: llama.cpp"
    line=$($PY $ANCHORS/llama_cpp_bench.py "$file" --threads "$THREADS" --pp 128 --tg 128 --reps 3 | grep RESULT |
      $PY -c "import sys, json; d = json.loads(sys.stdin.read().split('RESULT ', 1)[1]); print(f\"llama.cpp pp128 {d['pp_tok_s']['median']:.1f} tok/s  tg128 {d['tg_tok_s']['median']:.1f} tok/s  peak RSS {d['peak_rss_mib']:.0f} MiB\")")
    echo "$line"
    theirs+=("$(echo "$line" | awk '{ print $3, $6 }')")
  fi
  for kv in f32 f16; do
    echo "== round $r: tritium (--kv-cache $kv)"
    out=$(target/release/tritium bench "$file" --threads "$THREADS" --pp 128 --tg 128 --reps 3 --kv-cache $kv)
    echo "$out"
  done
  ours+=("$(echo "$out" | awk '$1 == "pp128" { pp = $2 } $1 == "tg128" { tg = $2 } END { print pp, tg }')")
done
# tritium (f16 cache) over llama.cpp per round, then the median of the rounds.
for i in "${!ours[@]}"; do echo "${ours[$i]} ${theirs[$i]}"; done | awk '
  { pp[NR] = $1 / $3; tg[NR] = $2 / $4; ps = ps sprintf(" %.2f", pp[NR]); ts = ts sprintf(" %.2f", tg[NR]) }
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    printf "tritium (f16 cache) / llama.cpp, round by round: pp128%s, tg128%s\n", ps, ts
    printf "median of %d rounds: pp128 %.2f, tg128 %.2f\n", NR, median(pp, NR), median(tg, NR)
  }'
