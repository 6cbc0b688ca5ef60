#!/bin/bash
# One short real-GPU check: NVML through bridge.scheduling.gpu, and what the CPU-built Ollama sees.
set -u
O=${OUT:-/tmp/out}; mkdir -p "$O"
{
  date -u; uname -a
  nvidia-smi --query-gpu=name,memory.total,memory.used,memory.free,driver_version --format=csv
  echo "nvcc: $(command -v nvcc || echo none)"; ls -d /usr/local/cuda* 2>&1 | head -3
  echo "python: $(command -v python3) $(python3 --version 2>&1)"
  PYTHONPATH=.gpucheck:. python3 -c 'from bridge.scheduling.gpu import read_gpus; r = read_gpus(); print(r); print("total", r.total)' 2>&1
} > "$O/gpu.txt" 2>&1
chmod +x .gpucheck/ollama
export OLLAMA_HOST=127.0.0.1:11500 OLLAMA_MODELS=/tmp/ollama-models HOME=/tmp OLLAMA_DEBUG=1
{ ls -laR .gpucheck/lib; ldd .gpucheck/lib/ollama/cuda_v13/libggml-cuda.so; ldd ${OLLAMA_BIN:-.gpucheck/ollama}; } > "$O/libs.txt" 2>&1
${OLLAMA_BIN:-.gpucheck/ollama} serve > "$O/ollama-serve.log" 2>&1 &
pid=$!
for i in $(seq 1 50); do curl -s -o /dev/null "http://$OLLAMA_HOST/" && break; sleep 0.2; done
{
  cd .gpucheck && printf 'FROM ./tiny.gguf\n' > Modelfile && ../${OLLAMA_BIN:-.gpucheck/ollama} create tiny -f Modelfile 2>&1 | tail -2; cd ..
  echo "--- generate (load)"; curl -s "http://$OLLAMA_HOST/api/generate" -d '{"model":"tiny","prompt":"hello","stream":false,"options":{"num_predict":4}}' | head -c 600; echo
  echo "--- ps"; curl -s "http://$OLLAMA_HOST/api/ps"; echo
  echo "--- generate num_ctx 8192"; curl -s "http://$OLLAMA_HOST/api/generate" -d '{"model":"tiny","prompt":"hello","stream":false,"options":{"num_predict":4,"num_ctx":8192}}' | head -c 300; echo
  echo "--- ps"; curl -s "http://$OLLAMA_HOST/api/ps"; echo
  echo "--- NVML while loaded"; PYTHONPATH=.gpucheck:. python3 -c 'from bridge.scheduling.gpu import read_gpus; print(read_gpus())' 2>&1
  echo "--- unload"; curl -s "http://$OLLAMA_HOST/api/generate" -d '{"model":"tiny","keep_alive":0}'; echo
  echo "--- ps"; curl -s "http://$OLLAMA_HOST/api/ps"; echo
} > "$O/ollama.txt" 2>&1
kill $pid; wait $pid 2>/dev/null
grep -i -E "inference compute|gpu|cuda|vram|library|total|backend|load|dlopen|error" "$O/ollama-serve.log" | head -80 > "$O/ollama-gpu-lines.txt"
echo done
