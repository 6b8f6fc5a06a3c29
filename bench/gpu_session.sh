#!/usr/bin/env bash
# The GPU measurements on a lent machine that has CUDA 13, PyTorch and nothing else we need,
# and no network (docs/BENCHMARKS.md, "GPU"). onnxruntime-gpu 1.31.1 (255 MB) travels as an
# xz tarball split over four calls (.gpu1/part .. .gpu4/part, 64 MiB per call); the server's
# wheels and `hey` travel in .whl/. Everything lands in /root/gpu and survives while the
# machine stays warm between calls.
#   bash bench/gpu_session.sh stage1   # part 1, wheels, env report, export models (CPU verified)
#   bash bench/gpu_session.sh stage 2  # part 2 (then 3)
#   bash bench/gpu_session.sh run      # part 4, install onnxruntime-gpu, gpu_check.sh, raw, server
#   bash bench/gpu_session.sh workers  # part 4 instead: workers=4 against one process, gpu_check
# Output goes to $OUT (the device tool brings it back).
# The carried files are git-ignored; to make them on a fresh clone:
#   pip download --no-deps --python-version 3.12 --only-binary=:all: -d w onnxruntime-gpu==1.31.1
#   mkdir -p x && unzip -q w/onnxruntime_gpu-*.whl -d x && tar c -C x . | xz -6 -T2 > ort.tar.xz
#   head -c 46M ort.tar.xz > .gpu1/part (stage1 also carries .whl/, so its part is smaller),
#   then 58M each into .gpu2/part, .gpu3/part and the rest into .gpu4/part (dd bs=1M skip=..);
#   each call's carry stays under 64 MiB. .whl/: the cp312 wheels of the server's runtime dependencies
#   (pip download, no deps resolution on that machine) and a `hey` binary (Debian's).
set -uo pipefail
cd "$(dirname "$0")/.."
G="${GPU_WORK:-/root/gpu}"
OUT="${OUT:-/tmp/out}"
mkdir -p "$G/parts" "$G/site" "$OUT"
export GPU_WORK="$G" PYTHONPATH="$G/site" PYTHONUNBUFFERED=1 PATH="$G/bin:$PATH"

install_wheels() {
  mkdir -p "$G/bin"; cp .whl/hey "$G/bin/hey"; chmod +x "$G/bin/hey"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$G/site" .whl/*.whl
}

cuda_libs() {  # directories holding the pip CUDA/cuDNN libraries that PyTorch's image carries
  python3 - <<'PY'
import pathlib, site
dirs = set()
for sp in site.getsitepackages():
    for lib in pathlib.Path(sp, "nvidia").rglob("lib*.so*"):
        dirs.add(str(lib.parent))
print(":".join(sorted(dirs)))
PY
}

case "${1:-}" in
stage1)
  cp .gpu1/part "$G/parts/1"
  { date -u; nvidia-smi; nproc; python3 --version; grep -m1 "model name" /proc/cpuinfo
    python3 -m pip list 2>/dev/null | grep -iE "^(torch|onnx|onnxruntime|numpy|nvidia-cudnn|nvidia-cublas|nvidia-cuda-runtime|pillow) "
  } >"$OUT/env.txt" 2>&1
  install_wheels >>"$OUT/env.txt" 2>&1
  mkdir -p "$G/models"
  # Random weights' ResNet50 in fp16 misses the fp16 relative-logit floor (0.017 > 0.01 on the
  # CPU provider): its logits are far larger than a trained network's. Relaxed, and said so.
  for p in fp32 fp16; do
    floors=(); [[ $p == fp16 ]] && floors=(--floor max_rel_logit_error=0.05)
    timeout 300 python3 -m export resnet18 resnet50 --weights random --seed 0 --precision "$p" \
      "${floors[@]}" --provider cpu --out-dir "$G/models" >>"$OUT/export.log" 2>&1 \
      || echo "export $p FAILED rc=$?" | tee -a "$OUT/export.log"
  done
  ls -la "$G/models" | tee -a "$OUT/export.log"
  ;;
stage)
  cp ".gpu$2/part" "$G/parts/$2" && ls -la "$G/parts"
  ;;
run)
  cp .gpu4/part "$G/parts/4"
  cat "$G"/parts/1 "$G"/parts/2 "$G"/parts/3 "$G"/parts/4 | sha256sum
  cat "$G"/parts/1 "$G"/parts/2 "$G"/parts/3 "$G"/parts/4 | xz -dc -T4 | tar x -C "$G/site" || exit 1
  [[ -x "$G/bin/hey" ]] || install_wheels
  # First without LD_LIBRARY_PATH: does onnxruntime-gpu find the pip CUDA libraries by itself?
  timeout 60 python3 - >"$OUT/cuda_libs.txt" 2>&1 <<'PY'
import onnxruntime as ort
print(ort.__version__, ort.__file__, ort.get_available_providers())
for preload in (False, True):
    if preload:
        try:
            ort.preload_dlls()
        except Exception as e:
            print("preload_dlls failed:", e)
    try:
        import os; s = ort.InferenceSession(os.environ["GPU_WORK"] + "/models/resnet18.onnx", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        print("preload", preload, "->", s.get_providers())
    except Exception as e:
        print("preload", preload, "-> failed:", e)
PY
  LIBS="$(cuda_libs)"
  echo "LD_LIBRARY_PATH=$LIBS" >>"$OUT/cuda_libs.txt"
  export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "== gpu_check.sh, unchanged"
  PYTHON=python3 GPU_CHECK_SECONDS=3 timeout 180 bash bench/gpu_check.sh >"$OUT/gpu_check.log" 2>&1
  echo "gpu_check rc=$?" | tee -a "$OUT/gpu_check.log"; tail -25 "$OUT/gpu_check.log"
  echo "== raw ONNX Runtime"
  timeout 150 python3 -m bench.gpu_raw "$G/models" --out "$OUT/raw.json" >"$OUT/raw.log" 2>&1
  echo "raw rc=$?"; grep -E "agreement|b=  1|b= 32|b=128|b=256|io |FAIL" "$OUT/raw.log" | head -60
  echo "== server"
  mkdir -p "$G/server"
  timeout 190 python3 -m bench.gpu_server "$G/models" --out "$G/server/server.json" --seconds 4 \
    >"$OUT/server.log" 2>&1
  echo "server rc=$?"; cp "$G/server/server.json" "$OUT/" 2>/dev/null; cat "$OUT/server.log" | cut -c1-400 | tail -40
  tail -c 20000 "$G"/server/server-*.log >"$OUT/server_stderr.log" 2>/dev/null
  ;;
run2)  # after run: the shape-change costs, then the server again with padded batches
  cp .gpu4/part "$G/parts/4"
  cat "$G"/parts/1 "$G"/parts/2 "$G"/parts/3 "$G"/parts/4 | xz -dc -T4 | tar x -C "$G/site" || exit 1
  export LD_LIBRARY_PATH="$(cuda_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  timeout 90 python3 -m bench.gpu_raw "$G/models" --out "$OUT/shapes.json" --only-shapes 2>&1 | tee "$OUT/shapes.log"
  mkdir -p "$G/server"
  timeout 300 python3 -m bench.gpu_server "$G/models" --out "$G/server/server2.json" --seconds 4 \
    --agreement-check false >"$OUT/server2.log" 2>&1
  echo "server rc=$?"; cp "$G/server/server2.json" "$OUT/" 2>/dev/null; cut -c1-330 "$OUT/server2.log" | tail -30
  tail -c 8000 "$G"/server/server-1.log >"$OUT/server2_stderr.log" 2>/dev/null
  ;;
run3)  # after run2: sessions per batch size (ResNet50 only, to fit the time left)
  cp .gpu4/part "$G/parts/4"
  cat "$G"/parts/1 "$G"/parts/2 "$G"/parts/3 "$G"/parts/4 | xz -dc -T4 | tar x -C "$G/site" || exit 1
  export LD_LIBRARY_PATH="$(cuda_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  mkdir -p "$G/m50" "$G/server" && ln -sf "$G"/models/resnet50.onnx "$G"/models/resnet50-fp16.onnx "$G/m50/"
  timeout 280 python3 -m bench.gpu_server "$G/m50" --out "$G/server/server3.json" --seconds 4 \
    --agreement-check false --no-two-instances >"$OUT/server3.log" 2>&1
  echo "server rc=$?"; cp "$G/server/server3.json" "$OUT/" 2>/dev/null; cut -c1-330 "$OUT/server3.log" | tail -30
  grep -v "No execution plans" "$G"/server/server-1.log | tail -c 6000 >"$OUT/server3_stderr.log" 2>/dev/null
  ;;
workers)  # after stage1 and stage 2, 3: the built-in workers mode against one process, with
  # the agreement check on (it now runs on every session per batch size), then gpu_check.sh
  cp .gpu4/part "$G/parts/4"
  cat "$G"/parts/1 "$G"/parts/2 "$G"/parts/3 "$G"/parts/4 | xz -dc -T4 | tar x -C "$G/site" || exit 1
  [[ -x "$G/bin/hey" ]] || install_wheels
  export LD_LIBRARY_PATH="$(cuda_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  mkdir -p "$G/m50" "$G/server" && ln -sf "$G"/models/resnet50.onnx "$G/m50/"
  timeout 300 python3 -m bench.gpu_server "$G/m50" --out "$G/server/workers.json" --seconds 4 \
    --only-workers --procs 4 --rounds 2 --model resnet50 >"$OUT/workers.log" 2>&1
  echo "workers rc=$?"; cp "$G/server/workers.json" "$OUT/" 2>/dev/null; cut -c1-330 "$OUT/workers.log" | tail -20
  grep -E "agreement|worker [0-9]+ (died|could)|ERROR" "$G"/server/server-w*.log | tail -20
  PYTHON=python3 GPU_CHECK_SECONDS=3 timeout 180 bash bench/gpu_check.sh >"$OUT/gpu_check.log" 2>&1
  echo "gpu_check rc=$?" | tee -a "$OUT/gpu_check.log"; tail -15 "$OUT/gpu_check.log"
  ;;
*) echo "usage: $0 stage1 | stage N | run | run2 | run3 | workers" >&2; exit 2 ;;
esac
