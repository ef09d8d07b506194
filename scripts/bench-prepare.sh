#!/usr/bin/env bash
# `tritium data prepare` at corpus scale: a synthetic Parquet + zstd JSONL corpus (the train
# crate's `make_corpus` example, TinyStories paragraphs drawn at random; no download) tokenized
# with the GPT-2 tokenizer, once straight through and once killed with SIGKILL part-way and run
# again to the end. Reports MB/s and peak RSS of each run and whether the resumed output has the
# same bytes as the straight one.
#
#   scripts/bench-prepare.sh [MEGABYTES] [KILL_AFTER_SECONDS]     (default 2000 MB, 60 s)
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-2000}
kill_after=${2:-60}
work=${WORK:-runs/bench-prepare}
tok=datasets/tokenizers/gpt2/tokenizer.json
mkdir -p "$work"
cargo build --release -q -p tritium-cli -p tritium-train --example make_corpus --bins
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
corpus="$work/corpus-$mb"
[ -d "$corpus" ] || target/release/examples/make_corpus "$corpus" "$mb"
du -sh "$corpus"
digest() { (cd "$1" && sha256sum -- *.bin meta.json | sha256sum | cut -c1-16); }

rm -rf "$work/straight" "$work/resumed"
echo "== straight run"
/usr/bin/time -f "wall %e s, peak RSS %M KB" target/release/tritium data prepare \
  --tokenizer "$tok" --input "$corpus" --out "$work/straight" 2>&1 | tail -2

echo "== killed with SIGKILL after ${kill_after} s"
target/release/tritium data prepare --tokenizer "$tok" --input "$corpus" --out "$work/resumed" \
  >/dev/null 2>&1 &
pid=$!
sleep "$kill_after"
kill -9 "$pid" 2>/dev/null || { echo "the run ended before the kill; raise MEGABYTES"; exit 1; }
wait "$pid" 2>/dev/null || true
ls "$work/resumed" | tr '\n' ' '; echo
echo "== run again to the end"
/usr/bin/time -f "wall %e s, peak RSS %M KB" target/release/tritium data prepare \
  --tokenizer "$tok" --input "$corpus" --out "$work/resumed" 2>&1 | tail -3

a=$(digest "$work/straight"); b=$(digest "$work/resumed")
echo "output digest: straight $a, resumed $b"
[ "$a" = "$b" ] && echo "same bytes" || { echo "DIFFERENT"; exit 1; }
