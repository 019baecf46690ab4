#!/usr/bin/env bash
# `dpal-cache train` on one GPU, on one node with N GPUs, and on several nodes (torchrun + DDP).
#
# A recipe to read and adapt, run piece by piece on the right machines. Every process runs the
# same `dpal-cache train` command: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK, the loop joins the
# process group (NCCL on GPUs, gloo on CPUs), each rank takes a disjoint share of every epoch's
# samples (the same number of full batches on every rank) and rank 0 alone writes the run directory
# (config.yaml, metrics.jsonl, last.pt, tb/) and prints the progress bar and the summary.
#
# `python -m dpal_cache.cli` is not a runnable module: torchrun starts the console script itself
# with `--no-python` (the `dpal-cache` on PATH, or give its path, e.g. .venv/bin/dpal-cache).
#
# Batch size and learning rate: --batch-size is per process; the lr is --lr (base) * global batch / 256,
# global batch = batch size x processes x accum_steps, so adding GPUs keeps the recipe.
#
# Shared store access: every rank reads the store and the source images itself (no rank sends data to
# another), so every node must see them under the same path: a shared filesystem (NFS, Lustre), a
# copy per node at the same path, or an object-store URL (s3://, gs://) whose credentials every node
# has. The store is read-only during training; any number of ranks and runs may read it at once.
# Each rank opens it lazily in each DataLoader worker; remote stores use forkserver workers.
# RUN_DIR only needs to be writable by rank 0 (node 0), but resume must find it: put it on shared
# storage when the job may restart on other nodes.
#
# Resume: run the same command again with --resume (same config; max_steps, workers, device,
# log_every, checkpoint_every, tensorboard, background_dir and skip_changed may change). last.pt
# is written atomically every checkpoint_every steps (temp file + rename: a kill mid-write leaves the
# previous one), with the data position, so the run continues at the next batch. Resume with the
# same number of processes and batch size: the data split and the lr scale depend on them.
set -euo pipefail

STORE=${STORE:-/shared/feats/path-b.zarr}    # or s3://bucket/feats/path-b.zarr
DATA=${DATA:-/shared/LUP1M}                  # the images the store was extracted from
RUN=${RUN:-/shared/runs/vit_small_dpade}
NGPUS=${NGPUS:-$( (nvidia-smi --list-gpus 2>/dev/null || true) | wc -l)}
NNODES=${NNODES:-2}
NODE_RANK=${NODE_RANK:-0}                    # 0 on the first node, 1 .. NNODES-1 on the others
MASTER=${MASTER:-node01:29500}               # host:port of node 0, reachable from every node
DPAL=${DPAL:-dpal-cache}
TORCHRUN=${TORCHRUN:-torchrun}
# extra options for every recipe, e.g. ARGS="--student vit_small_patch16 --epochs 100 --batch-size 256 --ema 0.996"
read -r -a ARGS <<< "${ARGS:-}"

case "${1:-help}" in

single)  # one GPU (or CPU): no torchrun needed
  "$DPAL" train --store "$STORE" --data "$DATA" --out "$RUN" "${ARGS[@]}"
  ;;

node)  # one node, NGPUS processes, one per GPU
  "$TORCHRUN" --standalone --nproc_per_node "$NGPUS" --no-python \
    "$DPAL" train --store "$STORE" --data "$DATA" --out "$RUN" "${ARGS[@]}"
  ;;

multinode)  # run on EVERY node with its own NODE_RANK; all nodes start the same command
  # c10d rendezvous at MASTER (node 0 hosts it). --rdzv_id names the job: keep it for a restart.
  "$TORCHRUN" --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NGPUS" \
    --rdzv_backend c10d --rdzv_endpoint "$MASTER" --rdzv_id "dpal-$(basename "$RUN")" --no-python \
    "$DPAL" train --store "$STORE" --data "$DATA" --out "$RUN" "${ARGS[@]}"
  ;;

resume)  # continue a stopped run: the same launcher line as before, with --resume
  "$TORCHRUN" --standalone --nproc_per_node "$NGPUS" --no-python \
    "$DPAL" train --store "$STORE" --data "$DATA" --out "$RUN" --resume "${ARGS[@]}"
  ;;

cpu-smoke)  # two gloo processes on CPU, a few steps: checks the launcher line without GPUs
  OMP_NUM_THREADS=1 "$TORCHRUN" --standalone --nproc_per_node 2 --no-python \
    "$DPAL" train --store "$STORE" --data "$DATA" --out "$RUN" --device cpu --workers 0 \
    --batch-size 2 --max-steps 3 "${ARGS[@]}"
  ;;

*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d'
  cat <<'EOF'
# Usage: bash pipelines/train_ddp.sh single|node|multinode|resume|cpu-smoke
#   (settings from the environment: STORE DATA RUN NGPUS NNODES NODE_RANK MASTER DPAL TORCHRUN ARGS)
# Example: STORE=runs/quickstart/feats.zarr DATA=runs/quickstart/synth/bounding_box_train \
#   RUN=runs/ddp_smoke DPAL=.venv/bin/dpal-cache TORCHRUN=.venv/bin/torchrun bash pipelines/train_ddp.sh cpu-smoke
EOF
  ;;
esac
