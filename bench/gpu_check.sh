#!/usr/bin/env bash
# GPU smoke check (make gpu-check), under 5 minutes on a machine with a CUDA GPU and
# onnxruntime-gpu installed in the venv:
#   1. export resnet18 and resnet50 with seeded random weights into a temp dir,
#   2. start the server with the CUDA provider and no CPU fallback,
#   3. check GET /models reports provider == cuda for both models,
#   4. send real JPEG requests (closed loop, concurrency 1 and 16) and print throughput,
#      latency percentiles and GPU utilisation/memory.
# Exits non-zero on any failure. Environment: PYTHON (default .venv/bin/python),
# GPU_CHECK_SECONDS (per load phase, default 10).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
SECONDS_PER_PHASE="${GPU_CHECK_SECONDS:-10}"
WORK="$(mktemp -d -t gpu-check-XXXXXX)"
SERVER_PID=""

cleanup() {
  if [[ -n "${SERVER_PID}" ]] && kill -0 "${SERVER_PID}" 2>/dev/null; then
    kill -TERM "${SERVER_PID}" 2>/dev/null || true
    wait "${SERVER_PID}" 2>/dev/null || true
  fi
  rm -rf "${WORK}"
}
trap cleanup EXIT

die() { echo "gpu-check: FAIL: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver on this machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"${PYTHON}" -c 'import onnxruntime as o, sys; p = o.get_available_providers(); print("onnxruntime", o.__version__, p); sys.exit(0 if "CUDAExecutionProvider" in p else 1)' \
  || die "this onnxruntime has no CUDAExecutionProvider: pip install onnxruntime-gpu"

echo "== exporting resnet18, resnet50 (random weights) into ${WORK}/models"
"${PYTHON}" -m export resnet18 resnet50 --weights random --seed 0 --out-dir "${WORK}/models" >"${WORK}/export.log" 2>&1 \
  || { tail -20 "${WORK}/export.log"; die "export failed"; }

PORT="$("${PYTHON}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:${PORT}"
echo "== starting the server on ${URL} (RESNET_PROVIDER=cuda, no CPU fallback)"
RESNET_MODEL_DIR="${WORK}/models" RESNET_PORT="${PORT}" RESNET_HOST=127.0.0.1 \
  RESNET_PROVIDER=cuda RESNET_ALLOW_CPU_FALLBACK=false RESNET_LOG_LEVEL=warning \
  "${PYTHON}" -m server >"${WORK}/server.log" 2>&1 &
SERVER_PID=$!

ready=0
for _ in $(seq 1 240); do
  kill -0 "${SERVER_PID}" 2>/dev/null || { tail -40 "${WORK}/server.log"; die "server exited"; }
  if "${PYTHON}" -c "import httpx, sys; sys.exit(httpx.get('${URL}/readyz', timeout=2).status_code != 200)" 2>/dev/null; then
    ready=1; break
  fi
  sleep 0.5
done
[[ "${ready}" == 1 ]] || { tail -40 "${WORK}/server.log"; die "server not ready in 120 s"; }

echo "== checking providers (GET /models)"
"${PYTHON}" - "${URL}" <<'PY' || die "a model is not on the CUDA provider"
import sys

import httpx

models = httpx.get(sys.argv[1] + "/models", timeout=10).json()["models"]
bad = []
for m in models:
    print(f"  {m['name']}: provider={m['provider']} session_providers={m['session_providers']}")
    if m["provider"] != "cuda":
        bad.append(m["name"])
sys.exit(1 if bad or len(models) < 2 else 0)
PY

echo "== load: real JPEG uploads (skimage 'chelsea' photo, 500x375)"
"${PYTHON}" - "${PORT}" "${SECONDS_PER_PHASE}" <<'PY' || die "load check failed"
import sys

from bench.gpu import GpuSampler
from bench.images import photo
from bench.load import Target, closed_loop
from bench.sweep import _run

port, seconds = int(sys.argv[1]), float(sys.argv[2])
jpeg = photo("chelsea", (500, 375)).jpeg
failed = False
for model in ("resnet18", "resnet50"):
    target = Target("server", model, port, f"/predict/{model}", jpeg, "image/jpeg")
    for c in (1, 16):
        sampler = GpuSampler()
        sampler.start()
        r = _run(closed_loop(target, c, seconds, 1.0))
        g = sampler.stop()
        gpu = f"GPU util {g.util_pct:.0f}%, mem {g.mem_mib:.0f} MiB" if g else "GPU: no samples"
        print(f"  {model} concurrency {c:2d}: {r.throughput:7.1f} req/s  p50 {r.pct(50) * 1e3:6.1f} ms  "
              f"p99 {r.pct(99) * 1e3:6.1f} ms  errors {r.errors}  503 {r.rejected}  {gpu}")
        failed |= r.ok == 0 or r.errors > 0
sys.exit(1 if failed else 0)
PY

echo "gpu-check: OK"
