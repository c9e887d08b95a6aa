#!/usr/bin/env bash
# End-to-end training on the GPU machine (issue 12's table): the five stadapter-train configs and the
# loaders alone, with PyAV and NVIDIA DALI, which the GPU image lacks and which come in parts.
#   bash benchmarks/run_gpu_train.sh PHASES [OUT_DIR]      (OUT_DIR default: $OUT, else benchmarks/out)
# Before the visit, here (PyPI reachable): `python -m benchmarks.gpu_deps pack` writes .gpu-deps/part-1..N
# (60 MiB each; the device tool carries 64 MiB per call). Then, back to back (files outside the repo
# stay on the machine only while it is warm, 30 s after a call), one call per part, each carrying that
# part (carry: [".gpu-deps/part-K"]), and two more calls:
#   calls 1..N-1: "G"    stash part K; report NVDEC, NPP and the `nvidia` package path
#   call N:       "G U"  stash the last part; unpack; check the imports; probe DALI's NVDEC route; test
#                        both GPU routes' clips against the CPU pipeline's; make the dataset (H.264 + VP9
#                        if NVDEC works, else VP9, which DALI's CPU decoder reads)
#   call N+1:     "E1"   the batch that fits (BATCH=auto); configs 1 and 3, the pair the issue's target
#                        compares, first (each killed after 150 s; the phase after 540 s)
#   call N+2:     "E2"   configs 2, 4, 5 and the loaders alone, appended to the same table
# Phases: G (benchmarks/gpu_deps.py gather), U (unpack; TRAIN_VIDEOS, default 512; 32 val; 16 frames at
# 224), E1/E2 (benchmarks/train_gpu.py; BATCH, default auto: the largest that fits config 1, found by E1
# and kept by E2; WORKERS, default 16; EPOCHS, default 3; REPEAT, default 4, raised to 48 steps an epoch;
# DEVICE, default cuda; COMMON, default its ViT-B/16 arguments; DALI_DECODER, default what U's probe
# found). E1/E2 bring back train_gpu.json, the table and the logs. Exit status:
# that of the last failing step.
set -uo pipefail
cd "$(dirname "$0")/.."
PHASES="${1:?phases, e.g. 'G', 'G U', 'E1' or 'E2'}"
OUT_DIR="${2:-${OUT:-benchmarks/out}}"
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
want() { [[ " $PHASES " == *" $1 "* ]]; }
PY="${PYTHON:-python3}"
STASH=/tmp/stadapter-gpu-deps SITE=/tmp/stadapter-gpu-site DATA=/tmp/stadapter-train-data RUNS=/tmp/stadapter-train-runs
ROUTE=/tmp/stadapter-dali-decoder
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
rc=0

{
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+uncommitted changes)')"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  echo "cpu cores: $(nproc)"
} | tee "$OUT_DIR/env_train.txt"

if want G; then
  echo "== stash the carried dependency part(s)"
  $PY -m benchmarks.gpu_deps gather --stash "$STASH" || exit 1
  {
    echo "NVDEC: $(ldconfig -p 2>/dev/null | grep -c nvcuvid) libnvcuvid entr(ies) in the loader cache; loads:" \
      "$($PY -c 'import ctypes
try:
    ctypes.CDLL("libnvcuvid.so.1"); print(True)
except OSError as e:
    print(False, e)')"
    echo "NPP (DALI's operators load it from the CUDA toolkit): $(ls /usr/local/cuda/lib64/libnpp{c,icc,ig}.so* 2>/dev/null | tr '\n' ' ')"
    echo "shared memory (the PyAV DataLoader's batches pass through it): $(df -h /dev/shm 2>/dev/null | tail -n 1)"
    echo "the image's nvidia package: $($PY -c 'import nvidia; print(list(nvidia.__path__), getattr(nvidia, "__file__", None))' 2>&1)"
  } | tee -a "$OUT_DIR/env_train.txt"
fi

# what the image lacks, after the repo; `nvidia` stays a namespace package (gpu_deps prunes
# nvidia/__init__.py), so nvidia.dali from $SITE sits beside the image's nvidia.* (cuBLAS, cuDNN, ...)
export PYTHONPATH="$PYTHONPATH:$SITE"

if want U; then
  echo "== unpack the packages into $SITE"
  if [ ! -f "$SITE/.gpu-deps-complete" ]; then
    rm -rf "$SITE"
    $PY -m benchmarks.gpu_deps unpack --stash "$STASH" --site "$SITE" || exit 1
  fi
  $PY -c "import av, nvidia.dali as d; print('av', av.__version__, '| dali', d.__version__, 'from', d.__file__)" \
    | tee -a "$OUT_DIR/env_train.txt" || exit 1
  echo "== DALI's NVDEC route"
  timeout -k 10 120 $PY -m benchmarks.train_gpu --probe-dali /tmp/stadapter-dali-probe 2>&1 | tee "$OUT_DIR/dali_probe.txt"
  cp /tmp/stadapter-dali-probe/route.txt "$ROUTE" || echo cpu > "$ROUTE"
  echo "== the GPU routes' clips vs the CPU pipeline's (tests/data/test_data.py)"
  timeout 120 $PY -m pytest -q -p no:cacheprovider -rs tests/data/test_data.py -k gpu_routes 2>&1 \
    | tail -n 15 | tee -a "$OUT_DIR/dali_probe.txt" || rc=1
  codecs=vp9,h264; [ "$(cat "$ROUTE")" = gpu ] || codecs=vp9
  echo "== synthetic dataset at 224x224 ($codecs) in $DATA"
  if [ ! -s "$DATA/meta.json" ]; then  # written last; rm -rf $DATA to make another
    SECONDS=0
    $PY -m stadapter_fast.data.synthetic "$DATA" --train "${TRAIN_VIDEOS:-512}" --val 32 --frames 16 --size 224 \
      --codecs "$codecs" && echo "made in ${SECONDS}s" || { rm -rf "$DATA"; exit 1; }
  fi
fi

run_configs() {  # $1: configs, $2: loaders, $3: --append or nothing
  [ -s "$DATA/meta.json" ] && [ -f "$SITE/.gpu-deps-complete" ] || { echo "no dataset or packages: run phase U first"; return 1; }
  timeout 540 $PY -m benchmarks.train_gpu --data "$DATA" --out "$RUNS" --configs "$1" --loaders "$2" $3 \
    --batch-size "${BATCH:-auto}" --workers "${WORKERS:-16}" --epochs "${EPOCHS:-3}" --repeat "${REPEAT:-4}" \
    --device "${DEVICE:-cuda}" --dali-decoder "${DALI_DECODER:-$(cat "$ROUTE" 2>/dev/null || echo auto)}" \
    ${COMMON:+--common "$COMMON"} 2>&1 | tee "$OUT_DIR/train_gpu.txt"
  local status=${PIPESTATUS[0]}
  cp "$RUNS/train_gpu.json" "$OUT_DIR/" 2>/dev/null
  (cd "$RUNS" && tar czf "$OUT_DIR/train_logs.tar.gz" ./*.log ./*/metrics.jsonl ./*/summary.json 2>/dev/null)
  return "$status"
}
if want E1; then
  echo "== configs ${CONFIGS1:-1,3}"
  run_configs "${CONFIGS1:-1,3}" "" "" || rc=$?
fi
if want E2; then
  echo "== configs ${CONFIGS2:-2,4,5} and the loaders alone"
  run_configs "${CONFIGS2:-2,4,5}" "${LOADERS-pyav,dali}" --append || rc=$?
fi
ls -la "$OUT_DIR"
exit "$rc"
