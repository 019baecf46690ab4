#!/usr/bin/env bash
# End-to-end on generated data, no input needed: synthesise persons, scan them, preview the views,
# extract teacher features with a RANDOM ViT-B teacher (it shows the mechanics, not PATH-B's
# knowledge), then describe and verify the store.
#   bash pipelines/quickstart.sh [OUT_DIR]        (default runs/quickstart; run pipelines/setup.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/quickstart}
DPAL=${DPAL:-.venv/bin/dpal-cache}
mkdir -p "$OUT"

"$DPAL" synth --out "$OUT/synth" --ids 20 --images-per-id 6 --crowd-backgrounds 8 --overwrite
"$DPAL" scan --data "$OUT/synth/bounding_box_train" --out "$OUT/manifest.parquet" --overwrite
"$DPAL" viz views --data "$OUT/synth/bounding_box_train" --manifest "$OUT/manifest.parquet" \
  --n 6 --out "$OUT/views.png" --background "$OUT/synth/backgrounds"
"$DPAL" extract --teacher random:vit_base --data "$OUT/synth/bounding_box_train" \
  --manifest "$OUT/manifest.parquet" --out "$OUT/feats.zarr" --overwrite \
  --set views.crowd.background_dir="$OUT/synth/backgrounds" --set shard_images=32 --set calibration_images=32
"$DPAL" info "$OUT/feats.zarr"
"$DPAL" verify "$OUT/feats.zarr" --data "$OUT/synth/bounding_box_train" --sample 8
echo "done: $OUT (views.png, manifest.parquet, feats.zarr)"
