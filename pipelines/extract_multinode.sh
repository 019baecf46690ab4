#!/usr/bin/env bash
# Multi-node `dpal-cache extract` on a dask.distributed cluster: one dask worker per GPU, one task
# per block of `shard_images` images, the teacher loaded once per worker. The store equals the one
# a single-process run writes, bit for bit (tests/extract/test_cluster.py).
#
# A recipe to read and adapt, run piece by piece on the right machines (it is not one script for
# one machine). Every node runs the same dpal-cache (same version, same torch) and must see the
# same files under the same absolute paths:
#   - the images (--data, and --root for list files), e.g. on NFS/Lustre, or an LMDB copy per node
#     at the same path;
#   - the manifest (--manifest, made once by `dpal-cache scan`);
#   - the teacher weights (--checkpoint, or ~/.cache/dpal-cache/teachers/ on every node);
#   - the store (--out): a shared filesystem path, or an object-store URL (s3://, gs://) whose
#     credentials every node has (environment or instance role; fsspec reads them).
# A worker that sees other weights or another manifest refuses to write (the store's identity check
# runs in every task) and the run stops with the difference listed.
set -euo pipefail

SCHED_HOST=${SCHED_HOST:-node01}   # the machine that runs the scheduler
PORT=${PORT:-8786}
DATA=${DATA:-/shared/LUP1M}
MANIFEST=${MANIFEST:-/shared/lup1m.manifest.parquet}
OUT=${OUT:-/shared/feats/path-b.zarr}   # or s3://bucket/feats/path-b.zarr
CKPT=${CKPT:-/shared/weights/path_b.pth}
DPAL=${DPAL:-.venv/bin/dpal-cache}
DASK=${DASK:-.venv/bin/dask}

case "${1:-help}" in

scan)  # 1. once, on any node: the manifest every worker and the coordinator read
  "$DPAL" scan --data "$DATA" --out "$MANIFEST"
  ;;

scheduler)  # 2. on $SCHED_HOST: the scheduler (no GPU needed; keep it running for the whole job)
  "$DASK" scheduler --port "$PORT"
  ;;

workers)  # 3. on every GPU node: one single-threaded worker process per GPU, each pinned to its GPU.
  # --resources GPU=1 makes every block task ask for one GPU, so CPU-only workers that join the
  # cluster are never given blocks. --nthreads 1: one block at a time per GPU (a worker with more
  # threads still runs its blocks one after the other). Rendering runs inside the task, on this
  # worker's CPU share: give each worker ~cores/GPUs cores (dask sets OMP_NUM_THREADS=1 for the
  # worker; raise it with the environment if rendering is the bottleneck).
  # The nanny (default) restarts a worker that died; the scheduler gives its block to another.
  n_gpus=$(nvidia-smi --list-gpus | wc -l)
  for gpu in $(seq 0 $((n_gpus - 1))); do
    CUDA_VISIBLE_DEVICES=$gpu "$DASK" worker "tcp://$SCHED_HOST:$PORT" \
      --nworkers 1 --nthreads 1 --resources GPU=1 --name "$(hostname -s)-gpu$gpu" \
      --local-directory "/tmp/dask-$USER" &
  done
  wait
  ;;

extract)  # 4. from any machine that can reach the scheduler, the data, the manifest and the store (a
  # login node is fine: it needs neither a GPU nor the teacher's weights). The coordinator asks a worker for
  # the store layout, creates the store and writes its attributes, has a worker fit the calibration,
  # then submits one task per unfinished block and finalises the store when all are done.
  # Same options as a single-machine run; --workers is ignored on a cluster (rendering runs in the
  # task), --device auto picks each worker's GPU.
  "$DPAL" extract --teacher path-b --checkpoint "$CKPT" --data "$DATA" --manifest "$MANIFEST" \
    --out "$OUT" --batch-size 64 --scheduler "tcp://$SCHED_HOST:$PORT"
  ;;

*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d'
  cat <<'EOF'
# Usage: bash pipelines/extract_multinode.sh scan|scheduler|workers|extract
#   (settings from the environment: SCHED_HOST PORT DATA MANIFEST OUT CKPT DPAL DASK)
#
# Resume: blocks are written whole and only then flagged done. Whatever stopped the run (the
# coordinator killed, the scheduler lost, a node gone, a block failing after its 2 retries), run
# the same `extract` command again, on the same or another cluster, or on one machine without
# --scheduler: finished blocks are skipped, unfinished ones are written again from scratch. A
# changed config, teacher or manifest is refused with the difference shown (--overwrite starts
# again). A block that failed on every attempt is named in the error; the others were still written.
#
# One machine with several GPUs needs no scheduler: `dpal-cache extract ... --dask-workers N` starts
# N worker processes, spread over the visible GPUs.
EOF
  ;;
esac
