#!/usr/bin/env bash
# Builds bitnet.cpp's llama-bench (Microsoft's I2_S kernels) for a side-by-side benchmark with
# `tritium bench` on the same I2_S files (`make_model SHAPE OUT i2_s`, see scripts/bench-shapes.sh):
#
#   scripts/build-bitnet-cpp.sh [DIR]        (default /tmp/bitnet-cpp; prints the binary's path)
#   LLAMA_BENCH=$(scripts/build-bitnet-cpp.sh | tail -1) scripts/bench-shapes.sh   (on TQ2_0 files)
#
# The source is microsoft/BitNet at c82b5e6 (2024-10-18) with its llama.cpp submodule at
# Eddie-Wang1120/llama.cpp 406a503: the newest pair whose submodule commit is still public on
# that fork (later BitNet commits point at isHuangXin/llama.cpp). It predates 2B4T's
# `bitnet-b1.58` architecture, so it runs the `bitnet` architecture (SiLU) on every file. Where
# clang is missing the build uses GCC, with BitNet's clang check turned into a warning (its CMake
# already passes -fpermissive to GCC); say which compiler ran when quoting figures. I2_S only (the
# TL2 kernels need the code generator's per-model tables).
#
# Without access to GitHub, BITNET_REPO and BITNET_LLAMA_REPO name local mirrors of the two
# repositories (any git URL or path holding those commits).
set -euo pipefail
dir=${1:-/tmp/bitnet-cpp}
bitnet_repo=${BITNET_REPO:-https://github.com/microsoft/BitNet.git}
llama_repo=${BITNET_LLAMA_REPO:-https://github.com/Eddie-Wang1120/llama.cpp.git}
if [ ! -d "$dir/src" ]; then
  mkdir -p "$dir"
  git clone -q "$bitnet_repo" "$dir/src"
  git -C "$dir/src" checkout -q c82b5e6
  git -C "$dir/src" config submodule.3rdparty/llama.cpp.url "$llama_repo"
  llama=$dir/src/3rdparty/llama.cpp
  llama_commit=406a5036f9a8aaee9ec5e96e652f61691340fe95
  # A mirror without the large vocabulary test files (models/*.gguf) clones but cannot check out
  # the whole tree; the build needs none of them, so everything else is checked out instead.
  git -C "$dir/src" -c protocol.file.allow=always submodule update -q --init 3rdparty/llama.cpp ||
    [ -d "$llama/.git" ] || [ -f "$llama/.git" ]
  git -C "$llama" checkout -q "$llama_commit" 2>/dev/null ||
    git -C "$llama" checkout -q "$llama_commit" -- . ':!models/*.gguf'
fi
cd "$dir/src"
# The LUT header is included even for I2_S; any preset serves.
cp preset_kernels/bitnet_b1_58-large/bitnet-lut-kernels-tl2.h include/bitnet-lut-kernels.h
cp preset_kernels/bitnet_b1_58-large/kernel_config_tl2.ini include/kernel_config.ini
compilers=()
if command -v clang > /dev/null && command -v clang++ > /dev/null; then
  compilers=(-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++)
else
  sed -i 's/message(FATAL_ERROR "Clang is required for Bitnet.cpp compilation")/message(WARNING "GCC build")/' src/CMakeLists.txt
fi
cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON "${compilers[@]}" > build.log 2>&1
cmake --build build --target llama-bench -j "$(nproc)" >> build.log 2>&1
echo "$dir/src/build/bin/llama-bench"
