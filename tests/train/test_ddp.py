"""Two-process torchrun (gloo, CPU) through the CLI: both ranks train on disjoint samples; rank 0
alone writes the metrics, the config and the checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dpal_cache.cli import _register, app
from dpal_cache.train.checkpoint import load_checkpoint

# each rank: record the keys its DataLoader asks for, then run `dpal-cache train` as the console script does
WORKER = """
import json, os, sys
import torch
from dpal_cache.cli import main
from dpal_cache.train import data

torch.set_num_threads(1)
seen = []
getitems = data.StoreDataset.__getitems__

def recording(self, keys):
    seen.append([int(k) for k in keys])
    return getitems(self, keys)

data.StoreDataset.__getitems__ = recording
out, sys.argv = sys.argv[1], ["dpal-cache", *sys.argv[2:]]
try:
    main()
finally:
    with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as fh:
        json.dump({"world": os.environ["WORLD_SIZE"], "keys": seen}, fh)
"""


@pytest.mark.slow
def test_two_process_torchrun_trains_on_disjoint_samples(store, tmp_path, read_metrics):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path), "train", "--store", store.url, "--data", str(store.folder), "--out", str(run_dir),
           "--batch-size", "2", "--max-steps", "3", "--epochs", "2", "--workers", "0", "--device", "cpu",
           "--set", "log_every=1", "--set", "optim.warmup_epochs=0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "train:" in result.stdout + result.stderr  # rank 0's summary table

    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]  # one writer: one line per step
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "last.pt", "metrics.jsonl", "model.json"]
    assert load_checkpoint(run_dir / "last.pt")["step"] == 3

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == "2" for r in ranks)
    keys = [[k for batch in r["keys"] for k in batch] for r in ranks]
    assert len(keys[0]) == len(keys[1]) >= 2 + 2 + 1  # the same number of samples: batches of 2, 2 and the last 1
    n = 10
    for epoch in range(2):
        a = {k for k in keys[0] if k // n == epoch}
        b = {k for k in keys[1] if k // n == epoch}
        assert not a & b, epoch
    # 3 steps of 2 x 2 samples are one epoch of 10 (the last batch holds one per rank): every sample once
    assert sorted(k for r in keys for k in r if k < n) == list(range(n))

    # a single-process --resume of the 2-process run would train another data order at half the lr
    before = (run_dir / "last.pt").read_bytes(), (run_dir / "metrics.jsonl").read_bytes()
    _register()
    resumed = CliRunner().invoke(app, cmd[cmd.index("train"):] + ["--resume"])
    assert resumed.exit_code == 2, resumed.output
    assert "trained with 2 process(es)" in resumed.output and "torchrun --nproc_per_node 2" in resumed.output
    assert ((run_dir / "last.pt").read_bytes(), (run_dir / "metrics.jsonl").read_bytes()) == before


@pytest.mark.parametrize("sets", [{}, {"decoder.kind": "linear"}, {"decoder.kind": "mae"}, {"decoder.kind": "moe"},
                                  {"decoder.low_rank": 4}, {"loss.relation": "gram"}, {"loss.relation_weight": 0.0},
                                  {"loss.mask": "attention", "loss.local_norm": "mask"}])
def test_every_parameter_gets_a_gradient(store, sets):
    """DDP runs with find_unused_parameters=False: a parameter without a gradient would stall it."""
    import torch

    from dpal_cache.config import load_config
    from dpal_cache.data.sources import open_source
    from dpal_cache.train.config import TrainConfig
    from dpal_cache.train.data import StoreDataset
    from dpal_cache.train.loop import _to_device, build_model

    cfg = load_config(TrainConfig, overrides=sets)
    dataset = StoreDataset(store.url, open_source(store.folder), relation=cfg.loss.relation)
    torch.manual_seed(0)
    model = build_model(cfg, dataset)
    batch = _to_device(dataset.__getitems__([0, 1]), torch.device("cpu"))
    model(batch, 0)["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
