#!/usr/bin/env bash
# LoRA at 2B4T's shape, back to back in one run: tritium (bf16 products, with and without
# activation checkpointing) and the usual PyTorch + transformers + PEFT recipe (bf16 master
# weights), rows of 512 tokens, r 32, alpha 64 on all seven projections. Prints each run's
# per-step tokens/s and peak RSS. Compare figures only within one run.
#
#   scripts/bench-lora-2b.sh BASE_CHECKPOINT HF_DIR [ROUNDS]
#
# BASE_CHECKPOINT and HF_DIR come from `scripts/lora-2b.py make` and `tritium import` (see that
# script). PY names the Python with torch, transformers and peft (default: python3).
set -euo pipefail
base=${1:?base checkpoint (tritium import of the HF directory)}
hf=${2:?HF directory written by scripts/lora-2b.py make}
rounds=${3:-1}
py=${PY:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
tritium=${TRITIUM:-$root/target/release/tritium}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
for variant in bf16 bf16-checkpointing; do
    cp "$root/configs/lora-2b.toml" "$work/$variant.toml"
    printf 'precision = "bf16"\n' >>"$work/$variant.toml"
    [[ $variant == *checkpointing ]] && printf 'gradient_checkpointing = true\n' >>"$work/$variant.toml"
done

tritium_run() {
    local variant=$1 out="$work/out-$1"
    rm -rf "$out"
    /usr/bin/time -f "%M" -o "$work/rss" "$tritium" finetune --config "$work/$variant.toml" \
        --base "$base" --data "$root/datasets/instruct/seed_tasks.alpaca.jsonl" --out "$out" \
        >"$work/log" 2>&1
    local steps
    steps=$(grep -oE '^step [0-9]+ \| loss .* \| ([0-9.]+) tok/s' "$work/log" | grep -oE '[0-9.]+ tok/s$' | cut -d' ' -f1 | tr '\n' ' ')
    printf 'tritium %-20s tok/s by step: %s peak RSS %.2f GiB\n' "$variant" "$steps" "$(echo "$(cat "$work/rss") / 1048576" | bc -l)"
    rm -rf "$out"
}

torch_run() {
    local line
    line=$(TORCHDYNAMO_DISABLE=1 "$py" "$root/scripts/lora-2b.py" torch "$hf" --seq 512 --steps 4 2>/dev/null | tail -1)
    echo "pytorch+peft bf16           $line"
}

for r in $(seq "$rounds"); do
    echo "round $r"
    tritium_run bf16-checkpointing
    torch_run
    tritium_run bf16
done
