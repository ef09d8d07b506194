#!/usr/bin/env bash
# LoRA at 2B4T's shape, back to back in one run: tritium (bf16 products; activation checkpointing
# of every block, of the first CKPT_BLOCKS (default 14) of the 30, and none) and the usual
# PyTorch + transformers + PEFT recipe (bf16 master weights). Rows of exactly 512 tokens
# (tritium: instruction examples whose responses run past the row, so each is cut to one full
# row; PyTorch: 512 random tokens), r 32, alpha 64 on all seven projections, STEPS steps
# (default 8). Prints each run's tokens/s by step, the median from
# step 3 on (both stacks are still warming up before), and peak RSS. Compare only within one run.
#
#   scripts/bench-lora-2b.sh BASE_CHECKPOINT HF_DIR [ROUNDS]
#
# BASE_CHECKPOINT and HF_DIR come from `scripts/lora-2b.py make` and `tritium import` (see that
# script). PY names the Python with torch, transformers and peft (default: python3).
set -euo pipefail
base=${1:?base checkpoint (tritium import of the HF directory)}
hf=${2:?HF directory written by scripts/lora-2b.py make}
rounds=${3:-1}
steps=${STEPS:-8}
py=${PY:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
tritium=${TRITIUM:-$root/target/release/tritium}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
# Responses of ~4000 characters: with the byte-level tokenizer of the random 2B model every
# example is longer than a row.
"$py" - "$root/datasets/instruct/seed_tasks.alpaca.jsonl" "$work/long.jsonl" <<'PY'
import json, sys
src = [json.loads(l) for l in open(sys.argv[1])]
outs = [s["output"] for s in src]
with open(sys.argv[2], "w") as f:
    for i, s in enumerate(src):
        text = " ".join(outs[(i + j) % len(outs)] for j in range(12))[:4000]
        f.write(json.dumps({"instruction": s["instruction"], "input": s["input"], "output": text}) + "\n")
PY
blocks=${CKPT_BLOCKS:-14}
for variant in bf16 bf16-ckpt-all "bf16-ckpt-$blocks"; do
    sed "s/^steps = .*/steps = $steps/" "$root/configs/lora-2b.toml" >"$work/$variant.toml"
    printf 'precision = "bf16"\n' >>"$work/$variant.toml"
done
printf 'gradient_checkpointing = true\n' >>"$work/bf16-ckpt-all.toml"
printf 'gradient_checkpointing = %d\n' "$blocks" >>"$work/bf16-ckpt-$blocks.toml"

tritium_run() {
    local variant=$1 out="$work/out-$1"
    rm -rf "$out"
    /usr/bin/time -f "%M" -o "$work/rss" "$tritium" finetune --config "$work/$variant.toml" \
        --base "$base" --data "$work/long.jsonl" --out "$out" \
        >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
    local rates
    rates=$(grep -oE '^step [0-9]+ \| loss .* \| ([0-9.]+) tok/s' "$work/log" | grep -oE '[0-9.]+ tok/s$' | cut -d' ' -f1 | tr '\n' ' ')
    printf 'tritium %-18s tok/s by step: %s| median from step 3: %s | peak RSS %.2f GiB\n' "$variant" \
        "$rates" "$(median_from3 $rates)" "$(echo "$(cat "$work/rss") / 1048576" | bc -l)"
    rm -rf "$out"
}

median_from3() {
    (($# > 2)) || { echo n/a; return; }
    shift 2
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'
}

torch_run() {
    local line rates
    line=$(TORCHDYNAMO_DISABLE=1 "$py" "$root/scripts/lora-2b.py" torch "$hf" --seq 512 --steps "$steps" 2>/dev/null | tail -1)
    rates=$(echo "$line" | "$py" -c 'import json,sys; print(" ".join(f"{512/s:.1f}" for s in json.load(sys.stdin)["step_seconds"]))')
    printf 'pytorch+peft bf16          tok/s by step: %s | median from step 3: %s | peak RSS %s GiB\n' \
        "$rates" "$(median_from3 $rates)" "$(echo "$line" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["peak_rss_gib"])')"
}

for r in $(seq "$rounds"); do
    echo "round $r"
    tritium_run bf16-ckpt-all
    tritium_run "bf16-ckpt-$blocks"
    torch_run
    tritium_run bf16
done
