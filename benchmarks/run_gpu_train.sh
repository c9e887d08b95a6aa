#!/usr/bin/env bash
# End-to-end training on the GPU machine (issue 12's table): the five stadapter-train configs and the
# loaders alone, with PyAV and NVIDIA DALI, which the GPU image lacks and which come in parts.
#   bash benchmarks/run_gpu_train.sh PHASES [OUT_DIR]      (OUT_DIR default: $OUT, else benchmarks/out)
# Before the visit, here (PyPI reachable): `python -m benchmarks.gpu_deps pack` writes .gpu-deps/part-1..N
# (60 MiB each; the device tool carries 64 MiB per call). Then, back to back (files outside the repo
# stay on the machine only while it is warm, 30 s after a call), one call per part, each carrying that
# part (carry: [".gpu-deps/part-K"]), and one more call:
#   calls 1..N-1: "G"    stash part K (the first call also reports NVDEC)
#   call N:       "G U"  stash the last part; unpack; make the 224x224 synthetic dataset (needs PyAV)
#   call N+1:     "E"    train the five configs and time the loaders alone (limit 540 s)
# Phases: G stash the carried part(s) (benchmarks/gpu_deps.py gather) and report libnvcuvid; U unpack
# the packages, check they import, make the dataset (TRAIN_VIDEOS, default 512; 32 val; 16 frames at
# 224, VP9 and H.264); E run benchmarks/train_gpu.py (CONFIGS, default 1,2,3,4,5; LOADERS, default
# pyav,dali; BATCH, default 32; WORKERS, default 16; EPOCHS, default 3; DEVICE, default cuda; COMMON,
# default its ViT-B/16 arguments) and bring back train_gpu.json, the table and the logs.
set -uo pipefail
cd "$(dirname "$0")/.."
PHASES="${1:?phases, e.g. 'G', 'G U' or 'E'}"
OUT_DIR="${2:-${OUT:-benchmarks/out}}"
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
want() { [[ " $PHASES " == *" $1 "* ]]; }
PY="${PYTHON:-python3}"
STASH=/tmp/stadapter-gpu-deps SITE=/tmp/stadapter-gpu-site DATA=/tmp/stadapter-train-data RUNS=/tmp/stadapter-train-runs
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+uncommitted changes)')"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  echo "cpu cores: $(nproc)"
} | tee "$OUT_DIR/env_train.txt"

if want G; then
  echo "== stash the carried dependency part(s)"
  $PY -m benchmarks.gpu_deps gather --stash "$STASH" || exit 1
  echo "NVDEC (libnvcuvid) in the loader cache: $(ldconfig -p 2>/dev/null | grep -c nvcuvid) entr(ies)" | tee -a "$OUT_DIR/env_train.txt"
  $PY -c "from stadapter_fast.data.loaders import nvdec_available as f; print('libnvcuvid.so.1 loads:', f())" \
    | tee -a "$OUT_DIR/env_train.txt"
fi

if want U || want E; then
  # what the image lacks; `nvidia` stays a namespace package (gpu_deps prunes nvidia/__init__.py)
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi

if want U; then
  echo "== unpack the packages into $SITE"
  if [ ! -d "$SITE/nvidia/dali" ]; then
    $PY -m benchmarks.gpu_deps unpack --stash "$STASH" --site "$SITE" || exit 1
  fi
  # nvidia.dali from $SITE needs the image's `nvidia` to be a namespace package (torch's cu13 wheels
  # ship no nvidia/__init__.py); the path printed shows which copy was imported
  $PY -c "import av, nvidia.dali as d; print('av', av.__version__, '| dali', d.__version__, 'from', d.__file__)" \
    | tee -a "$OUT_DIR/env_train.txt" || exit 1
  echo "== synthetic dataset at 224x224 in $DATA"
  [ -s "$DATA/train.txt" ] || { SECONDS=0; $PY -m stadapter_fast.data.synthetic "$DATA" --train "${TRAIN_VIDEOS:-512}" \
    --val 32 --frames 16 --size 224 && echo "made in ${SECONDS}s"; }
fi

if want E; then
  [ -s "$DATA/train.txt" ] && [ -d "$SITE/nvidia/dali" ] || { echo "no dataset or packages: run phase U first"; exit 1; }
  echo "== five training configs and the loaders alone"
  timeout 540 $PY -m benchmarks.train_gpu --data "$DATA" --out "$RUNS" --configs "${CONFIGS:-1,2,3,4,5}" \
    --loaders "${LOADERS-pyav,dali}" --batch-size "${BATCH:-32}" --workers "${WORKERS:-16}" --epochs "${EPOCHS:-3}" \
    --device "${DEVICE:-cuda}" ${COMMON:+--common "$COMMON"} 2>&1 | tee "$OUT_DIR/train_gpu.txt"
  cp "$RUNS/train_gpu.json" "$OUT_DIR/" 2>/dev/null
  (cd "$RUNS" && tar czf "$OUT_DIR/train_logs.tar.gz" ./*.log ./*/metrics.jsonl ./*/summary.json 2>/dev/null)
fi
ls -la "$OUT_DIR"
