#!/usr/bin/env bash
# The benchmark suite on one CUDA GPU, offline: `dpal-cache bench --device cuda` with a ViT-B teacher,
# bf16 autocast (extract and train use it on CUDA by default), batch 64, and the issue's scaling sizes
# (1k and 4k images). Budgeted to finish in under 8 minutes on one GPU with 8+ CPU cores.
#
#   bash pipelines/bench_gpu.sh OUT_DIR [WHEEL_DIR]
#
# OUT_DIR gets bench_gpu.json (training, extraction, store, loader), bench_gpu_scaling.json,
# nvidia-smi.txt and the logs. Without WHEEL_DIR it uses an environment where dpal-cache is already
# installed ($DPAL_CACHE, else `dpal-cache` on PATH, else ./.venv). With WHEEL_DIR it makes ./.venv-gpu
# from wheels only (no network): torch, torchvision and every dependency, plus either a dpal_cache
# wheel or setuptools + wheel to install this checkout. Prepare such a folder on a machine with network:
#   pip download torch==2.14.1 torchvision==0.29.1 -d wheels/    # the CUDA build for the target machine
#   pip wheel . setuptools wheel -w wheels/                        # dpal-cache and all its dependencies
set -euo pipefail

OUT=${1:?usage: bash pipelines/bench_gpu.sh OUT_DIR [WHEEL_DIR]}
WHEELS=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [[ -n "$WHEELS" ]]; then
  python3 -m venv .venv-gpu
  PIP=(.venv-gpu/bin/pip install --no-index --find-links "$WHEELS")
  if compgen -G "$WHEELS/dpal_cache-*.whl" > /dev/null; then
    "${PIP[@]}" dpal-cache
  else
    "${PIP[@]}" setuptools wheel
    "${PIP[@]}" --no-build-isolation -e .
  fi
  DPAL=.venv-gpu/bin/dpal-cache
else
  DPAL=${DPAL_CACHE:-$(command -v dpal-cache || echo .venv/bin/dpal-cache)}
fi

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
export CUDA_MODULE_LOADING=LAZY
CPUS=$(nproc)
W=$(( CPUS > 9 ? 8 : CPUS - 1 ))  # DataLoader workers: leave a core for the training/teacher process
LOADER_WORKERS="0,2"
for w in 4 "$W"; do [[ $w -gt 2 && ",$LOADER_WORKERS," != *",$w,"* ]] && LOADER_WORKERS="$LOADER_WORKERS,$w"; done
COMMON=(--device cuda --teacher random:vit_base --student vit_tiny_patch16 --batch-size 64 --workers "$W"
        --extract-workers "$W")

# 1) training, extraction, store, loader: about 3-4 minutes (the loader's 0-worker case is the slowest part)
timeout 270 "$DPAL" bench "${COMMON[@]}" --images 512 --repeats 2 --steps 20 --warmup-steps 3 \
  --calibration-images 256 --loader-workers "$LOADER_WORKERS" --loader-batches 8 \
  --only extraction,store,training,loader --workdir "$OUT/work" --out "$OUT/bench_gpu.json" \
  2>&1 | tee "$OUT/bench_gpu.log" || echo "part 1 failed or ran out of time (see $OUT/bench_gpu.log)"

# 2) scaling at the issue's sizes: extract and train one epoch of 1k and 4k images, each in its own process
timeout 200 "$DPAL" bench "${COMMON[@]}" --images 64 --calibration-images 256 --scaling-sizes 1024,4096 \
  --scaling-teacher random:vit_base --scaling-shard-images 256 --scaling-workers "$W" --only scaling --workdir "$OUT/work" \
  --out "$OUT/bench_gpu_scaling.json" 2>&1 | tee "$OUT/bench_gpu_scaling.log" \
  || echo "part 2 failed or ran out of time (see $OUT/bench_gpu_scaling.log)"

echo "results: $OUT/bench_gpu.json $OUT/bench_gpu_scaling.json"
