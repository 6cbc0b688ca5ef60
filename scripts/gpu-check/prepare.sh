#!/bin/bash
# Assemble .gpucheck/ (ignored) for one real-GPU check on a lent device machine:
# the CPU-built Ollama binary (scripts/build-ollama), the ggml sources of the same
# version (CUDA backend built there by build.sh: sm_90, no flash-attention kernels,
# no CPU variants), a tiny GGUF, pynvml, and the two scripts. ~41 MB, under the
# device's 64 MiB working-tree limit. Then, through the device tool:
#   run(command="OUT=$OUT bash .gpucheck/build.sh", carry=[".gpucheck"], timeout_s=400)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(scripts/build-ollama)
SRC=${ALB_CACHE_DIR:-$HOME/.cache/alb}/build/ollama-${OLLAMA_VERSION:-0.17.4}
rm -rf .gpucheck && mkdir -p .gpucheck/src/ml/backend
grep -qx "/.gpucheck/" .git/info/exclude || echo "/.gpucheck/" >> .git/info/exclude
grep -qx "/.gpubuild/" .git/info/exclude || echo "/.gpubuild/" >> .git/info/exclude
cp "$BIN" .gpucheck/ollama
cp "$SRC/CMakeLists.txt" .gpucheck/src/
cp -r "$SRC/ml/backend/ggml" .gpucheck/src/ml/backend/
find .gpucheck/src -name "*.go" -delete
rm -rf .gpucheck/src/ml/backend/ggml/ggml/src/{ggml-vulkan,ggml-metal,ggml-hip}
sed -i 's/    set(GGML_CPU_ALL_VARIANTS ON)/    set(GGML_CPU_ALL_VARIANTS OFF)/; s/^set(GGML_CUDA_FA ON)/set(GGML_CUDA_FA OFF)/' \
    .gpucheck/src/CMakeLists.txt
cp "$(.venv/bin/python -c 'import pynvml; print(pynvml.__file__)')" .gpucheck/
.venv/bin/python scripts/make_tiny_gguf.py .gpucheck/tiny.gguf
cp scripts/gpu-check/build.sh scripts/gpu-check/run.sh .gpucheck/
du -sh .gpucheck
