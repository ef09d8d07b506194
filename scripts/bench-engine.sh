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
# The last lines give tritium (f16 cache) over llama.cpp round by round, and their median, then
# each decoder's roofline fraction round by round: bytes a decoded token reads × tokens/s over the
# plain two-thread read `tritium bench --bandwidth` measures in the f16 run. llama.cpp is credited
# with tritium's bytes a token, within 1% of its own (its TQ2_0 blocks carry a scale per 256
# weights where tritium's rows carry one per row; the f16 head and f16 cache are the same).
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
theirs=() ours=() roof=()
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
    bw=""
    if [ $kv = f16 ]; then bw=--bandwidth; fi
    out=$(target/release/tritium bench "$file" --threads "$THREADS" --pp 128 --tg 128 --reps 3 --kv-cache $kv $bw)
    echo "$out"
  done
  ours+=("$(echo "$out" | awk '$1 == "pp128" { pp = $2 } $1 == "tg128" { tg = $2 } END { print pp, tg }')")
  # "77.9 MB read per token" and "the measured 33.5 GB/s" of the f16 run's last line.
  roof+=("$(echo "$out" | sed -nE 's/.* ([0-9.]+) MB read per token.* measured ([0-9.]+) GB\/s.*/\1 \2/p')")
done
# Per round "pp tg llama-pp llama-tg MB-a-token read-GB/s": tritium (f16 cache) over llama.cpp,
# then each decoder's roofline fraction (its tg × MB a token / the round's read); then medians.
for i in "${!ours[@]}"; do echo "${ours[$i]} ${theirs[$i]} ${roof[$i]}"; done | awk '
  { pp[NR] = $1 / $3; tg[NR] = $2 / $4; ps = ps sprintf(" %.2f", pp[NR]); ts = ts sprintf(" %.2f", tg[NR]) }
  NF == 6 { n++; a[n] = $2 * $5 / 1e3 / $6; b[n] = $4 * $5 / 1e3 / $6
            as = as sprintf(" %.0f%%", 100 * a[n]); bs = bs sprintf(" %.0f%%", 100 * b[n]) }
  function median(v, k,   i, j, t) {
    for (i = 2; i <= k; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
    return k % 2 ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
  }
  END {
    printf "tritium (f16 cache) / llama.cpp, round by round: pp128%s, tg128%s\n", ps, ts
    printf "median of %d rounds: pp128 %.2f, tg128 %.2f\n", NR, median(pp, NR), median(tg, NR)
    if (!n) exit
    printf "decode roofline (bytes a token x tok/s / the read), round by round: tritium%s; llama.cpp%s\n", as, bs
    printf "median of %d rounds: tritium %.0f%%, llama.cpp %.0f%%\n", n, 100 * median(a, n), 100 * median(b, n)
  }'
