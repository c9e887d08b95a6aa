#!/usr/bin/env bash
# One visit to the GPU machine: GPU tests, then the GPU benchmark in phases (each with its own time
# limit and JSON, so a slow phase still leaves the others' results), then the table and chart.
#   bash benchmarks/run_gpu.sh [OUT_DIR] [PHASES]   (OUT_DIR default: $OUT, else benchmarks/out;
#                                                   PHASES default "T A F B C D")
# Uses the machine's python3 (torch + triton preinstalled; nothing is downloaded). Phase limits: T 420 s
# (the GPU tests: 360 in parallel, then 60 for the timing check alone), A 240, F 180 (first-step cost:
# three processes of up to 60 s), B 120, C 120, D 60. On a machine with a 10-minute limit per command
# run it as three calls: "T", then "A F", then "B C D" (on the device tool each call gets its own $OUT),
# carrying .gpu-deps/test-wheels with the first (phase T). The Triton
# autotuner's picks are logged (TRITON_PRINT_AUTOTUNING) in each phase's .log. Rows carry device time
# (CUDA events, L2 flushed), eager wall time and CUDA-graph replay time (benchmarks/_harness.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/out}}"
PHASES="${2:-T A F B C D}"
mkdir -p "$OUT_DIR"
export TRITON_PRINT_AUTOTUNING=1
want() { [[ " $PHASES " == *" $1 "* ]]; }
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BENCH="$PY -m pytest benchmarks/ --benchmark-only -q -s -p no:cacheprovider --benchmark-columns=median,iqr,rounds"

{
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+uncommitted changes)')"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  $PY -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda)"
} | tee "$OUT_DIR/env.txt"

if want T; then
echo "== GPU tests"
# Over the cores with pytest-xdist (the image has it; if not, the wheels carried in .gpu-deps/test-wheels,
# made by `python -m benchmarks.gpu_deps test-wheels`, are used, never beside the image's own); each
# test runs one config per kernel (tests/conftest.py), so compiles, single-threaded, are most of the
# time. Tests marked serial (GPU timing) run after, alone. Inductor compiles in-process: 8 workers
# with a pool each would crowd the cores.
if ! $PY -c "import xdist" 2>/dev/null && [ -d .gpu-deps/test-wheels ] \
   && $PY -m benchmarks.gpu_deps test-site >/dev/null; then
  export PYTHONPATH="$PYTHONPATH:/tmp/stadapter-test-site"
fi
GPU_TESTS="tests/test_gpu.py tests/csrc_triton/test_tuning_configs.py tests/ops/test_fc2_residual.py tests/test_compile.py tests/test_mmaction2.py"
PARALLEL=""
if $PY -c "import xdist" 2>/dev/null; then PARALLEL="-n 8 --dist worksteal"; fi
echo "parallel: ${PARALLEL:-no (pytest-xdist missing)}" | tee "$OUT_DIR/gpu_tests.log"
TORCHINDUCTOR_COMPILE_THREADS=1 timeout 360 $PY -m pytest $GPU_TESTS -m "not serial" $PARALLEL -q \
  -p no:cacheprovider -rf --durations=10 >> "$OUT_DIR/gpu_tests.log" 2>&1
echo "rc: $?" >> "$OUT_DIR/gpu_tests.log"
timeout 60 $PY -m pytest $GPU_TESTS -m serial -q -p no:cacheprovider -rf >> "$OUT_DIR/gpu_tests.log" 2>&1
echo "rc (serial): $?" >> "$OUT_DIR/gpu_tests.log"
tail -n 40 "$OUT_DIR/gpu_tests.log" | tee "$OUT_DIR/gpu_tests.txt"
fi

if want A; then
echo "== Phase A: every provider, ViT-B/16 8 frames, bf16, levels 1-2: the release kernel, and mmaction2's adapter"
timeout 240 $BENCH -k "vitb16_8f and bfloat16 and ((k311 and (test_conv or test_adapter)) or test_adapter_mmaction2)" \
  --benchmark-json="$OUT_DIR/phase_a.json" \
  > "$OUT_DIR/phase_a.log" 2>&1; tail -n 5 "$OUT_DIR/phase_a.log"
fi
if want F; then
echo "== Phase F: first training step (Triton compiles + autotuning) vs later steps, ViT-B/16 12x384 bf16"
# Each run a fresh process with Triton's on-disk autotuning cache on: "fast" times every key's configs
# and writes them, "fast_cached" runs it again and reads them, "fast_onepass" is the one-pass path.
# The three runs go into one list, first_step.json.
for run in fast fast_cached fast_onepass; do
  TRITON_CACHE_AUTOTUNING=1 timeout 60 $PY -m benchmarks.first_step --provider "${run%_cached}" --label $run \
    --out "$OUT_DIR/first_step.json" > "$OUT_DIR/first_step_$run.log" 2>&1
  tail -n 8 "$OUT_DIR/first_step_$run.log"
done
fi
if want B; then
echo "== Phase B: reference vs fast over shapes, kernels and dtypes (levels 1-2)"
timeout 120 $BENCH --no-compiled-baseline -k "(test_conv or test_adapter) and not mmaction2 and not compiled and not channels_last and not (vitb16_8f and k311 and bfloat16)" \
  --benchmark-json="$OUT_DIR/phase_b.json" \
  > "$OUT_DIR/phase_b.log" 2>&1; tail -n 5 "$OUT_DIR/phase_b.log"
fi
if want C; then
echo "== Phase C: ViT-B/16 model, 12x384 and 24x384, bf16: train step and inference (level 3)"
timeout 120 $BENCH --no-compiled-baseline -k "test_model and bfloat16 and not compiled" \
  --benchmark-json="$OUT_DIR/phase_c.json" \
  > "$OUT_DIR/phase_c.log" 2>&1; tail -n 5 "$OUT_DIR/phase_c.log"
fi

if want D; then
echo "== Phase D: M-Adapter vs ST-Adapter 12x384, ViT-B/16 8 frames: peak memory and step time"
timeout 60 $BENCH -k "test_madapter" --benchmark-json="$OUT_DIR/phase_d.json" \
  > "$OUT_DIR/phase_d.log" 2>&1; tail -n 5 "$OUT_DIR/phase_d.log"
fi

echo "== Report"
jsons=$(ls "$OUT_DIR"/phase_*.json 2>/dev/null)
if [ -n "$jsons" ]; then
  $PY -m benchmarks.report $jsons --out-dir "$OUT_DIR" || echo "report failed (matplotlib missing?)"
fi
# The device tool brings back at most 8 files per call: the logs travel as one archive.
if ls "$OUT_DIR"/*.log >/dev/null 2>&1; then
  (cd "$OUT_DIR" && tar czf logs.tar.gz ./*.log && rm -f ./*.log)
fi
ls -la "$OUT_DIR"
