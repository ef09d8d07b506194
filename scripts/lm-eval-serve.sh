#!/usr/bin/env bash
# lm-evaluation-harness through `tritium serve`: PyPI lm-eval's OpenAI-completions model
# (`local-completions`, echo + logprobs, the server's own /tokenize as its tokenizer) scores the
# bundled ARC-Easy items, and `tritium eval` scores the same items directly; both accuracies are
# printed. Usage: scripts/lm-eval-serve.sh FILE.gguf [ITEMS] [PYTHON]
# (PYTHON: a Python with `pip install lm-eval`; no hub download is needed.)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: scripts/lm-eval-serve.sh FILE.gguf [ITEMS] [PYTHON]}
items=${2:-200}
python=${3:-python3}
port=${PORT:-18093}
bin=target/release/tritium
cargo build --release -q -p tritium-cli
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
sed "s|@TASK_FILE@|$PWD/datasets/eval/arc_easy.jsonl.gz|" tests/serve/lm_eval/arc_easy_local.yaml.in \
  > "$work/arc_easy_local.yaml"
"$bin" serve "$model" --port "$port" -t 2 --parallel 1 --queue 256 2> "$work/serve.log" &
server=$!
until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do sleep 0.2; done
name=$(basename "$model" .gguf)
ctx=$(curl -sf "http://127.0.0.1:$port/tokenizer_info" > /dev/null && "$bin" inspect "$model" --json \
  | "$python" -c "import json,sys; m=json.load(sys.stdin)['metadata']; print(m['bitnet.context_length'])")
HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 "$python" -m lm_eval --model local-completions \
  --model_args "base_url=http://127.0.0.1:$port/v1/completions,model=$name,tokenizer_backend=remote,tokenized_requests=True,num_concurrent=1,max_retries=1,max_length=$ctx" \
  --include_path "$work" --tasks arc_easy_local --limit "$items" --batch_size 1 \
  --output_path "$work/out" > "$work/lm_eval.log" 2>&1 || { tail -30 "$work/lm_eval.log"; exit 1; }
grep -E "^\|" "$work/lm_eval.log"
"$bin" eval --model "$model" --tasks arc_easy --limit "$items" -t 2 --out "$work/tritium.json"
