#!/usr/bin/env bash
# Tokenizing throughput side by side: `tritium data prepare` (read, encode, write shards) against
# the HF `tokenizers` Python package's `encode_batch_fast` (encode only) on the same text files
# with the same tokenizer, in alternating rounds; each HF round also checks that tritium's shards
# hold exactly the ids HF gives (scripts/tokenize-vs-hf.py).
#
#   scripts/bench-tokenize.sh [ROUNDS] [PYTHON] [FILE.txt ...]
#
# Defaults: 2 rounds, python3 (needs PyPI `tokenizers`), the english_books corpus beside the repo
# (../shared/datasets/pretrain/english_books/train.txt), the bundled GPT-2 tokenizer.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
python=${2:-python3}
shift $(( $# > 2 ? 2 : $# ))
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(../shared/datasets/pretrain/english_books/train.txt)
tok=datasets/tokenizers/gpt2/tokenizer.json
out=${WORK:-runs/bench-tokenize}
cargo build --release -q -p tritium-cli
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
inputs=()
for f in "${files[@]}"; do inputs+=(--input "$f"); done
for round in $(seq 1 "$rounds"); do
  echo "## round $round"
  rm -rf "$out"
  /usr/bin/time -f "  wall %e s, user %U s, peak RSS %M KB" \
    target/release/tritium data prepare --tokenizer "$tok" "${inputs[@]}" --out "$out" 2>&1 | tail -2
  /usr/bin/time -f "  wall %e s, user %U s, peak RSS %M KB" \
    "$python" scripts/tokenize-vs-hf.py "$tok" "$out" "${files[@]}" 2>&1
done
