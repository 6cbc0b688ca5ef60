#!/bin/bash
# Build Ollama v0.17.4's CUDA backend (sm_90 only, no flash-attention kernels) next to the
# CPU-built binary, then run run.sh. The build dir (.gpubuild, ignored) survives warm calls.
set -u
O=${OUT:-/tmp/out}; mkdir -p "$O"
export PATH=/usr/local/cuda/bin:$PATH
B=.gpubuild
start=$(date +%s)
if [ ! -f $B/lib/ollama/libggml-cuda.so ]; then
  cmake -S .gpucheck/src -B $B -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DCMAKE_DISABLE_FIND_PACKAGE_Vulkan=ON > "$O/cmake.log" 2>&1 || { echo configure failed; tail -30 "$O/cmake.log"; exit 1; }
  timeout ${BUILD_S:-420} cmake --build $B --target ggml-base ggml-cuda -j16 > "$O/build.log" 2>&1
  echo "build rc=$? after $(( $(date +%s) - start )) s"; tail -3 "$O/build.log"
fi
[ -f $B/lib/ollama/libggml-cuda.so ] || { echo "no libggml-cuda.so yet"; exit 3; }
mkdir -p .gpucheck/lib/ollama/cuda_v13
cp -a $B/lib/ollama/libggml-base.so* .gpucheck/lib/ollama/
cp -a $B/lib/ollama/libggml-cuda.so .gpucheck/lib/ollama/cuda_v13/
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
mkdir -p .gpucheck/bin && cp .gpucheck/ollama .gpucheck/bin/ollama
export OLLAMA_BIN=.gpucheck/bin/ollama
bash .gpucheck/run.sh
