#!/usr/bin/env bash
# The benchmark suite on one CUDA GPU, offline: `dpal-cache bench --device cuda` with a ViT-B teacher and a ViT-Ti
# student, bf16 autocast (extract and train use it on CUDA by default), inputs rendered on the GPU (train and
# extract default to it on CUDA). Every part runs under a timeout; together they stay under 8 minutes.
#
#   bash pipelines/bench_gpu.sh OUT_DIR                          # dpal-cache installed ($DPAL_CACHE, PATH, ./.venv)
#   bash pipelines/bench_gpu.sh OUT_DIR --installed WHEEL_DIR    # the machine's own torch; missing packages from
#                                                                #   WHEEL_DIR (<= 60 MB, see fetch_wheels.sh)
#   bash pipelines/bench_gpu.sh OUT_DIR WHEEL_DIR                # a new ./.venv-gpu from wheels only (torch too)
#
# --installed: for a GPU machine without network whose Python has torch (2.11+), torchvision, timm, typer, rich,
# pyarrow, numpy, pillow, pyyaml and safetensors, but not zarr, numcodecs, dask or threadpoolctl. The packages it
# lacks are installed from WHEEL_DIR into OUT_DIR/site (nothing else is touched) and dpal-cache runs from this
# checkout (`python3 -m dpal_cache`). Fill WHEEL_DIR on a machine with network:
#   bash pipelines/fetch_wheels.sh WHEEL_DIR 3.12      # ~7 MB of wheels for Python 3.12
#
# WHEEL_DIR without --installed: every package from wheels, torch included (prepare with network:
#   pip download torch==2.14.1 torchvision==0.29.1 -d wheels/ ; pip wheel . setuptools wheel -w wheels/).
#
# OUT_DIR gets bench_gpu.json (extraction, store, training at batch 256), bench_gpu_loader.json,
# bench_gpu_render.json (renderers per CPU core and on the GPU), bench_gpu_scaling.json, nvidia-smi.txt and the
# logs; each JSON is rewritten after every benchmark, so a part cut short keeps what it measured.
# BENCH_DEVICE=cpu BENCH_QUICK=1 runs the same parts with tiny sizes on a CPU: a dry run before GPU time.
set -euo pipefail

OUT=${1:?usage: bash pipelines/bench_gpu.sh OUT_DIR [--installed WHEEL_DIR | WHEEL_DIR]}
MODE=venv
WHEELS=${2:-}
if [[ "$WHEELS" == "--installed" ]]; then
  MODE=installed
  WHEELS=${3:?--installed needs a WHEEL_DIR (fill one with pipelines/fetch_wheels.sh)}
fi
DEVICE=${BENCH_DEVICE:-cuda}
QUICK=${BENCH_QUICK:-0}
cd "$(dirname "$0")/.."
REPO=$(pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)

# what dpal-cache imports, as distribution names (keep in step with fetch_wheels.sh)
NEEDS="zarr numcodecs donfig google-crc32c dask distributed partd locket tblib tornado zict threadpoolctl toolz
cloudpickle msgpack sortedcontainers psutil urllib3 jinja2 markupsafe click fsspec packaging typing_extensions pyyaml
torch torchvision timm typer rich pyarrow numpy pillow safetensors"

if [[ "$MODE" == installed ]]; then
  [[ -d "$WHEELS" ]] || { echo "wheel folder $WHEELS does not exist (fill it with pipelines/fetch_wheels.sh)"; exit 2; }
  MB=$(du -sm "$WHEELS" | cut -f1)
  if (( MB > 60 )); then
    echo "wheel folder $WHEELS holds ${MB} MB; at most 60 MB travel to the GPU machine"; exit 2
  fi
  PY=${PYTHON:-python3}
  MISSING=$("$PY" - $NEEDS <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version
missing = []
for name in sys.argv[1:]:
    try:
        version(name)
    except PackageNotFoundError:
        missing.append(name)
print(" ".join(missing))
PYEOF
)
  SITE="$OUT/site"
  if [[ -n "$MISSING" ]]; then
    echo "installing from $WHEELS into $SITE: $MISSING"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      --find-links "$WHEELS" $MISSING \
      || { echo "some of [$MISSING] are not in $WHEELS: add them (pipelines/fetch_wheels.sh)"; exit 2; }
  fi
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
  DPAL=("$PY" -m dpal_cache)
elif [[ -n "$WHEELS" ]]; then
  python3 -m venv .venv-gpu
  PIP=(.venv-gpu/bin/pip install --no-index --find-links "$WHEELS")
  if compgen -G "$WHEELS/dpal_cache-*.whl" > /dev/null; then
    "${PIP[@]}" dpal-cache
  else
    "${PIP[@]}" setuptools wheel
    "${PIP[@]}" --no-build-isolation -e .
  fi
  DPAL=(.venv-gpu/bin/dpal-cache)
else
  DPAL=("${DPAL_CACHE:-$(command -v dpal-cache || echo .venv/bin/dpal-cache)}")
fi
"${DPAL[@]}" --help > /dev/null || { echo "dpal-cache does not start: see the error above"; exit 2; }

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
export CUDA_MODULE_LOADING=LAZY
CPUS=$(nproc)
W=$(( CPUS > 9 ? 8 : (CPUS > 1 ? CPUS - 1 : 1) ))  # DataLoader workers: leave a core for the training process
LOADER_WORKERS="0,2"
for w in 4 "$W"; do [[ $w -gt 2 && ",$LOADER_WORKERS," != *",$w,"* ]] && LOADER_WORKERS="$LOADER_WORKERS,$w"; done
COMMON=(--device "$DEVICE" --teacher random:vit_base --student vit_tiny_patch16 --workers "$W" --extract-workers "$W"
        --calibration-images 256 --workdir "$OUT/work")
if [[ "$QUICK" == 1 ]]; then  # the dry run: tiny models and sizes, the same parts and options
  COMMON=(--device "$DEVICE" --teacher random:vit_tiny --student vit_tiny_patch16 --workers 1 --extract-workers 1
          --calibration-images 8 --workdir "$OUT/work" --view-size 64x32 --crowd-size 64x64 --local-size 32x16)
  BIG=(--batch-size 8 --images 16 --repeats 1 --steps 2 --warmup-steps 1)
  SMALL=(--batch-size 4 --images 16 --loader-workers 0,1 --loader-batches 2)
  SCALING=(--batch-size 4 --images 16 --scaling-sizes 8,16 --scaling-teacher random:vit_tiny --scaling-shard-images 8
           --scaling-workers 1)
else
  BIG=(--batch-size 256 --images 1024 --repeats 2 --steps 12 --warmup-steps 3)
  SMALL=(--batch-size 64 --images 1024 --loader-workers "$LOADER_WORKERS" --loader-batches 8)
  SCALING=(--batch-size 64 --images 1024 --scaling-sizes 1024,4096 --scaling-teacher random:vit_base
           --scaling-shard-images 256 --scaling-workers "$W")
fi

part() {  # part NAME SECONDS ARGS...: one bench run under a timeout, its own JSON and log
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "${DPAL[@]}" bench "${COMMON[@]}" "$@" --out "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" \
    || echo "$name failed or ran out of time (see $OUT/$name.log; $OUT/$name.json keeps the finished sections)"
}

# 1) extraction, store, training at the issue's batch of 256 (cached / online / in-memory; data-wait on CUDA)
part bench_gpu 180 "${BIG[@]}" --only extraction,store,training
# 2) the loader (target reads, workers) at batch 64, on the same images
part bench_gpu_loader 100 "${SMALL[@]}" --only loader
# 3) the renderers: per CPU core (32 samples) and on the GPU (the whole batch of 256, nvJPEG decode)
part bench_gpu_render 80 "${BIG[@]}" --repeats 1 --only render
# 4) scaling at 1k and 4k images: extract and train one epoch each, each stage in its own process
part bench_gpu_scaling 100 "${SCALING[@]}" --only scaling

echo "done in $(( $(date +%s) - START ))s; results: $OUT/bench_gpu*.json"
