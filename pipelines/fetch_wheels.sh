#!/usr/bin/env bash
# Fill a wheel folder for `bench_gpu.sh OUT_DIR --installed WHEEL_DIR` (a GPU machine without network whose
# Python already has torch, torchvision, timm, typer, rich, pyarrow, numpy, pillow, pyyaml and safetensors).
# Run it on any machine with access to PyPI; it downloads binary wheels only, for the target's Python:
#
#   bash pipelines/fetch_wheels.sh WHEEL_DIR [PYTHON_VERSION]     # e.g. wheels/ 3.12 (the default)
#
# The list is what dpal-cache needs beyond that (zarr and its codecs, dask + distributed, threadpoolctl) and
# their dependencies, about 7 MB; bench_gpu.sh installs only those the target lacks. The folder may hold at
# most 60 MB (bench_gpu.sh refuses a larger one: it travels to the GPU machine with the checkout).
# The same as one pip command per package:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 ... -d WHEEL_DIR zarr==3.1.6
set -euo pipefail

DIR=${1:?usage: bash pipelines/fetch_wheels.sh WHEEL_DIR [PYTHON_VERSION]}
PYVER=${2:-3.12}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64
           --platform manylinux_2_5_x86_64)
# keep in step with NEEDS in pipelines/bench_gpu.sh
PACKAGES=(zarr==3.1.6 numcodecs donfig google-crc32c dask distributed partd locket tblib tornado zict threadpoolctl
          toolz cloudpickle msgpack sortedcontainers psutil urllib3 jinja2 markupsafe click fsspec packaging
          typing_extensions pyyaml)
for p in "${PACKAGES[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${PLATFORMS[@]}" -d "$DIR" "$p"
done
ls "$DIR"
du -sh "$DIR"
