#!/usr/bin/env bash
# End-to-end on generated data, no input needed: synthesise persons, scan them, preview the views,
# extract teacher features with a RANDOM ViT-S teacher (it shows the mechanics, not PATH-B's
# knowledge), describe and verify the store, train a ViT-Ti student from the cache for a few
# epochs, export it for timm, run the reid probe (student vs teacher) and draw the pictures.
#   bash pipelines/quickstart.sh [OUT_DIR]        (default runs/quickstart; run pipelines/setup.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/quickstart}
DPAL=${DPAL:-.venv/bin/dpal-cache}
TEACHER=random:vit_small
mkdir -p "$OUT"

"$DPAL" synth --out "$OUT/synth" --ids 20 --images-per-id 6 --crowd-backgrounds 8 --overwrite
"$DPAL" scan --data "$OUT/synth/bounding_box_train" --out "$OUT/manifest.parquet" --overwrite
"$DPAL" viz views --data "$OUT/synth/bounding_box_train" --manifest "$OUT/manifest.parquet" \
  --n 6 --out "$OUT/views.png" --background "$OUT/synth/backgrounds"
"$DPAL" extract --teacher "$TEACHER" --data "$OUT/synth/bounding_box_train" \
  --manifest "$OUT/manifest.parquet" --out "$OUT/feats.zarr" --overwrite \
  --set views.crowd.background_dir="$OUT/synth/backgrounds" --set shard_images=32 --set calibration_images=32
"$DPAL" info "$OUT/feats.zarr"
"$DPAL" verify "$OUT/feats.zarr" --data "$OUT/synth/bounding_box_train" --sample 8
rm -rf "$OUT/run"  # a fresh run each time (train refuses to overwrite a run without --resume)
"$DPAL" train --store "$OUT/feats.zarr" --data "$OUT/synth/bounding_box_train" --out "$OUT/run" \
  --student vit_tiny_patch16 --epochs 3 --batch-size 8 --workers 1 --lr 2e-3 --set optim.warmup_epochs=1 \
  --set log_every=1
"$DPAL" export "$OUT/run" --out "$OUT/student.safetensors"
"$DPAL" eval reid --data "$OUT/synth" --model "$OUT/student.safetensors" --teacher "$TEACHER" \
  --json "$OUT/reid.json"
"$DPAL" viz curves "$OUT/run" --out "$OUT/curves.png"
"$DPAL" viz patterns --store "$OUT/feats.zarr" --data "$OUT/synth/bounding_box_train" \
  --model "$OUT/student.safetensors" --out "$OUT/patterns"
echo "done: $OUT (views.png, feats.zarr, run/, student.safetensors, reid.json, curves.png, patterns/report.md)"
