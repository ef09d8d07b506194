#!/usr/bin/env bash
# Training-step throughput, tritium against PyTorch (eager and torch.compile, fp32 and bf16
# autocast), back to back on this machine.
#
#   scripts/bench-train.sh tiny   [BATCH SEQ]   # configs/tiny.toml vs torch_bitnet.py --config tiny
#   scripts/bench-train.sh 125m   [BATCH SEQ]   # configs/bitnet-125m.toml vs --config 125m
#   ROUNDS=3 scripts/bench-train.sh ...          # then two more rounds of the headline pair
#
# Without BATCH SEQ, the shapes issue 20's goal names: tiny 8 x 128 and 125m 4 x 512. (Tiny's
# default was 8 x 256 until session 52, where compiled PyTorch gains on us: 1.23x against 1.63x
# at 8 x 128 the same hour.)
#
# The table runs every row once, one after another. This project's hosts drift by 15-30% within
# minutes, so ROUNDS=N follows it with N-1 alternating rounds of just tritium bf16, tritium int8
# and PyTorch compiled bf16 (the fastest PyTorch row on every run so far) and prints each
# tritium row's ratio to PyTorch's per round.
#
# Needs a release build (with `--features ndarray` and DEVICES=ndarray for an ndarray row) and, for the PyTorch
# row, PY pointing at a Python with torch (default: python3) and ANCHORS at the anchor scripts
# (default: ../shared/anchors). Shapes are matched with torch_bitnet.py's --set.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-tiny}
PY=${PY:-python3}
ANCHORS=${ANCHORS:-../shared/anchors}
BIN=target/release/tritium
case $which in
  tiny) cfg=configs/tiny.toml; batch=${2:-8}; seq=${3:-128}; torch="--config tiny --set ffn=768 --set vocab=4096"; steps=10; windows=5 ;;
  125m) cfg=configs/bitnet-125m.toml; batch=${2:-4}; seq=${3:-512}; torch="--config 125m --set vocab=50257"; steps=2; windows=3 ;;
  *) echo "usage: $0 tiny|125m [BATCH SEQ]" >&2; exit 2 ;;
esac
# Untimed steps before the windows, the same for every row: torch.compile compiles in the first
# and may recompile in the second, and tritium's first step after the first still grows its
# allocator's memory (its first timed window was the lowest of every run with one).
warmup=2
# Every row's arguments, tritium's and torch_bitnet.py's: the same steps, windows and warm-up.
ptrun="bench $torch --batch $batch --seq $seq --steps $steps --windows $windows --warmup $warmup"
run="bench-train --config $cfg --batch $batch --seq $seq --steps $steps --windows $windows --warmup $warmup"
# Rows: flex with the fused ops (the default), flex with --unfused (the plain tensor-op reference),
# then any other device named in DEVICES (e.g. DEVICES=ndarray with a `--features ndarray` build).
echo "== tritium flex (fused, f32 products)"
/usr/bin/time -f "peak RSS %M KiB" $BIN $run
# Each headline row's median tokens/s, from tritium's report line and torch_bitnet.py's RESULT.
ours() { grep -oE '[0-9.]+ tokens/s' | head -1 | cut -d' ' -f1; }
theirs() { sed -n 's/.*"tok_s_median": \([0-9.]*\).*/\1/p'; }
row() { $BIN $run --precision "$1"; }
compiled_bf16_row() { $PY $ANCHORS/torch_bitnet.py $ptrun --compile --autocast bf16 | grep RESULT; }
declare -A first
for p in bf16 int8; do
  echo "== tritium flex (fused, --precision $p)"
  out=$(/usr/bin/time -f "peak RSS %M KiB" $BIN $run --precision $p 2>&1)
  echo "$out"
  first[$p]=$(echo "$out" | ours)
done
echo "== tritium flex --unfused"
/usr/bin/time -f "peak RSS %M KiB" $BIN --unfused $run
for dev in ${DEVICES:-}; do
  echo "== tritium $dev"
  $BIN $run --device $dev || true
done
echo "== pytorch eager fp32"
$PY $ANCHORS/torch_bitnet.py $ptrun | grep RESULT
if [ "${BF16:-1}" = 1 ]; then
  echo "== pytorch eager bf16 autocast"
  $PY $ANCHORS/torch_bitnet.py $ptrun --autocast bf16 | grep RESULT
fi
# torch.compile (TorchInductor): what a PyTorch user runs when speed matters. Its warm-up steps
# compile (a minute or more); COMPILE=0 skips these rows.
if [ "${COMPILE:-1}" = 1 ]; then
  echo "== pytorch compiled fp32"
  $PY $ANCHORS/torch_bitnet.py $ptrun --compile | grep RESULT
  echo "== pytorch compiled bf16 autocast"
  out=$(compiled_bf16_row); echo "$out"
  b=$(echo "$out" | theirs)
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
  declare -A ratios=([bf16]="$(ratio "${first[bf16]}" "$b")" [int8]="$(ratio "${first[int8]}" "$b")")
  for r in $(seq 2 "${ROUNDS:-1}"); do
    declare -A a
    for p in bf16 int8; do
      echo "== round $r: tritium flex (fused, --precision $p)"
      out=$(row $p 2>&1); echo "$out"
      a[$p]=$(echo "$out" | ours)
    done
    echo "== round $r: pytorch compiled bf16 autocast"
    out=$(compiled_bf16_row); echo "$out"
    b=$(echo "$out" | theirs)
    for p in bf16 int8; do ratios[$p]="${ratios[$p]} $(ratio "${a[$p]}" "$b")"; done
  done
  for p in bf16 int8; do
    echo "tritium $p / pytorch compiled bf16, round by round: ${ratios[$p]}"
    echo "${ratios[$p]}" | tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 }
      END { printf "median of %d rounds: %.2f\n", NR, NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
  done
fi
