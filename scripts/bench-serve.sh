#!/usr/bin/env bash
# Server throughput side by side in one run: `tritium serve` (f32 and f16 KV cache) and
# llama.cpp's `llama-server` (its default f16 cache) on the same GGUF, 2 threads and 16 slots each, loaded in turn (alternating rounds) by `tritium
# bench-serve` with 1, 4, 8 and 16 concurrent streams of 128-token greedy completions.
# Usage: scripts/bench-serve.sh [FILE.gguf] [ROUNDS]
# Without FILE, the anchor's random-weight bitnet-125m TQ2_0 file is made (PyPI gguf + numpy).
# llama-server: LLAMA_SERVER=/path/to/llama-server, else it is built from llama.cpp's public
# source as PyPI's llama-cpp-python sdist vendors it (cmake from PyPI, -DGGML_NATIVE=ON, about
# 15 minutes on 2 cores) under $WORK (default /tmp/tritium-llama).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${2:-2}
work=${WORK:-/tmp/tritium-llama}
mkdir -p "$work"
model=${1:-$work/r125.gguf}
if [ ! -f "$model" ]; then
  python3 ../shared/anchors/make_bitnet_gguf.py --config 125m --wtype tq2_0 --embd f16 --out "$model"
fi
server_bin=${LLAMA_SERVER:-$work/llama.cpp/build/bin/llama-server}
if [ ! -x "$server_bin" ]; then
  version=0.3.36
  url=$(curl -sf https://pypi.org/simple/llama-cpp-python/ \
    | grep -o "https://files.pythonhosted.org/[^\"#]*llama_cpp_python-$version.tar.gz" | head -1)
  curl -sf -o "$work/src.tar.gz" "$url"
  tar xzf "$work/src.tar.gz" -C "$work"
  rm -rf "$work/llama.cpp" && mv "$work/llama_cpp_python-$version/vendor/llama.cpp" "$work/llama.cpp"
  command -v cmake > /dev/null || python3 -m pip install -q cmake
  cmake -S "$work/llama.cpp" -B "$work/llama.cpp/build" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release > "$work/cmake.log"
  cmake --build "$work/llama.cpp/build" --target llama-server -j 2 >> "$work/cmake.log"
fi
cargo build --release -q -p tritium-cli
bin=target/release/tritium
port=18095
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); model: $model"

wait_up() { until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do sleep 0.2; done; }
load() { "$bin" bench-serve --url "http://127.0.0.1:$port" --streams 1,4,8,16 --tokens 128 --requests 2 "$@"; }

for round in $(seq 1 "$rounds"); do
  # The default f32 KV cache, then llama-server's default cache type, f16.
  for kv in f32 f16; do
    echo "## round $round: tritium serve --kv-cache $kv"
    "$bin" serve "$model" --port $port -t 2 --parallel 16 --ctx 256 --queue 64 --kv-cache $kv \
      2> /dev/null &
    pid=$!; wait_up; load; kill $pid; wait $pid 2> /dev/null || true
  done
  echo "## round $round: llama-server"
  "$server_bin" -m "$model" -t 2 -np 16 -c 4096 --host 127.0.0.1 --port $port > /dev/null 2>&1 &
  pid=$!; wait_up; load; kill $pid; wait $pid 2> /dev/null || true
done
