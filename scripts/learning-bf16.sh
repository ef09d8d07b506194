#!/usr/bin/env bash
# Does bf16 change learning? The tiny config, SEEDS seeds × STEPS steps, with the training
# products in each of PATHS (`precision`: f32 and bf16 unless told), side by side: each run's
# validation loss at the last step, then the mean and spread (min–max) of each path and its
# mean's difference from the first path's.
#
#   scripts/learning-bf16.sh            # 5 seeds × 300 steps (about 10 minutes on 2 cores)
#   PATHS="f32 int8" scripts/learning-bf16.sh  # int8 input gradients against f32
#   FLAGS=--unfused scripts/learning-bf16.sh   # the tensor-op model's mixed precision (as on GPUs)
#   DEVICE=wgpu ...                            # on another device (a build with its feature)
#
# Needs a release build (cargo build --release). Runs go to runs/learning-bf16/.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"1 2 3 4 5"}
STEPS=${STEPS:-300}
BIN=${BIN:-target/release/tritium}
FLAGS=${FLAGS:-}
DEVICE=${DEVICE:-flex}
PATHS=${PATHS:-"f32 bf16"}
out=runs/learning-bf16
mkdir -p $out
: > $out/results.txt
for seed in $SEEDS; do
  for p in $PATHS; do
    run=$out/$p-seed$seed
    rm -rf "$run"
    $BIN $FLAGS train --config configs/tiny.toml --out "$run" --device "$DEVICE" \
      --set train.seed=$seed --set train.max_steps=$STEPS --set train.warmup_steps=$((STEPS < 50 ? STEPS / 2 : 50)) --set train.eval_every=$STEPS \
      --set train.checkpoint_every=$STEPS --set train.sample_tokens=0 --set train.precision=\"$p\" >/dev/null
    loss=$(grep '"val_loss":[0-9]' "$run/metrics.jsonl" | tail -1 | sed 's/.*"val_loss":\([0-9.e-]*\).*/\1/')
    echo "$p seed $seed: step-$STEPS validation loss $loss" | tee -a $out/results.txt
  done
done
python3 - "$out/results.txt" <<'PY'
import sys, collections
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p, rest = line.split(" seed ", 1)
    v[p].append(float(line.rsplit(" ", 1)[1]))
for p, xs in v.items():
    print(f"{p}: mean {sum(xs)/len(xs):.4f} over {len(xs)} seeds, spread {min(xs):.4f}–{max(xs):.4f}")
(a, xa), *rest = v.items()
for b, xb in rest:
    print(f"difference of means ({b} − {a}): {sum(xb)/len(xb) - sum(xa)/len(xa):+.4f} nats")
PY
