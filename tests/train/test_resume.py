"""Resume: an interrupted run continues exactly; checkpoints survive a kill mid-write; wrong resumes are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dpal_cache.data.sources import open_source
from dpal_cache.train.checkpoint import load_checkpoint, save_checkpoint
from dpal_cache.train.data import StoreMismatch
from dpal_cache.train.loop import train
from dpal_cache.train.losses import LOSS_KEYS

# drop path and an EMA make the run depend on the RNG state and the EMA weights a resume must restore
SETS = ["checkpoint_every=3", "student.drop_path_rate=0.1", "ema_decay=0.9", "decoder.kind=moe"]


@pytest.fixture(scope="module")
def runs(store, train_config, tmp_path_factory):
    """(uninterrupted 6-step run, the same run stopped after step 4, mid-epoch, and resumed with other runtime
    fields). 10 images in batches of 4: epochs of 3 batches (4, 4 and the last 2)."""
    root = tmp_path_factory.mktemp("resume")
    source = open_source(store.folder)
    full, split = root / "full", root / "split"
    train(train_config("max_steps=6", *SETS), store.url, source, full)
    train(train_config("max_steps=4", *SETS), store.url, source, split)
    # a checkpoint write killed between the temp file and the rename leaves a stray temp file;
    # a run killed after its last checkpoint has logged steps that the resume runs again
    (split / ".last.pt.tmp-99999").write_bytes(b"torn")
    with open(split / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 5, "loss": -1.0}) + "\n" + '{"step": 6, "lo')
    # max_steps and workers are runtime fields: they may change on resume
    train(train_config("max_steps=6", "workers=1", *SETS), store.url, source, split, resume=True)
    return full, split


def test_resume_gives_the_uninterrupted_trajectory(runs, read_metrics):
    full, split = runs
    a, b = read_metrics(full), read_metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for key in (*LOSS_KEYS, "lr", "epoch"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    sa, sb = load_checkpoint(full / "last.pt"), load_checkpoint(split / "last.pt")
    for part in ("model", "ema"):
        assert sa[part].keys() == sb[part].keys()
        assert all(torch.equal(sa[part][k], sb[part][k]) for k in sa[part]), part
    position = ("step", "epoch", "batch_in_epoch")
    assert [sa[k] for k in position] == [sb[k] for k in position] == [6, 1, 3]


def test_wrong_resumes_are_refused(store, tmp_path, train_config):
    source = open_source(store.folder)
    cfg = train_config("max_steps=1", "decoder.kind=linear")
    train(cfg, store.url, source, tmp_path / "run")
    with pytest.raises(FileExistsError, match="pass --resume, or choose another --out"):
        train(cfg, store.url, source, tmp_path / "run")
    with pytest.raises(StoreMismatch, match=r"different config.*\n  loss\.mask: run has 'pca', now 'none'"):
        train(train_config("max_steps=2", "decoder.kind=linear", "loss.mask=none"), store.url, source,
              tmp_path / "run", resume=True)
    # a checkpoint of a 3-head ViT-Ti (what vit_tiny_patch16 built before it became the paper's 6-head model):
    # the weights would fit, the function would not
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    state["student"]["timm_kwargs"].pop("num_heads")
    save_checkpoint(tmp_path / "run" / "last.pt", state)
    with pytest.raises(StoreMismatch, match="another architecture"):
        train(train_config("max_steps=2", "decoder.kind=linear"), store.url, source, tmp_path / "run", resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume: .*never_ran does not exist"):
        train(cfg, store.url, source, tmp_path / "never_ran", resume=True)
    assert not (tmp_path / "never_ran").exists()  # a refused run leaves no folder behind


WRITER = """
import sys, torch
from dpal_cache.train.checkpoint import save_checkpoint
path = sys.argv[1]
step = 0
while True:
    save_checkpoint(path, {"step": step, "w": torch.full((4_000_000,), float(step))})
    step += 1
    print(step, flush=True)
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one checkpoint is complete
        time.sleep(0.15)  # somewhere inside a later 16 MB write
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    state = load_checkpoint(path)
    assert torch.equal(state["w"], torch.full((4_000_000,), float(state["step"])))


KILLED_RUN = """
import sys, time
import torch
torch.set_num_threads(1)  # as in this test process: float sums depend on the thread count
sys.path.insert(0, {tests!r})
from conftest import _train_config
from dpal_cache.data.sources import open_source
from dpal_cache.train.loop import train
cfg = _train_config("max_steps=6", *{sets!r})
# a slow progress callback gives the parent time to kill the run between checkpoints
train(cfg, {url!r}, open_source({folder!r}), {run!r}, progress=lambda record: time.sleep(0.5))
"""


def test_sigkill_between_checkpoints_then_resume(runs, store, train_config, read_metrics, tmp_path):
    """A real SIGKILL after the step-3 checkpoint, before step 6: the resume redoes the lost steps exactly."""
    full, _ = runs
    run = tmp_path / "killed"
    script = KILLED_RUN.format(tests=os.path.dirname(__file__), sets=SETS, url=store.url,
                               folder=str(store.folder), run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert load_checkpoint(run / "last.pt")["step"] == 3  # steps 4.. were lost with the process
    train(train_config("max_steps=6", *SETS), store.url, open_source(store.folder), run, resume=True)
    a, b = read_metrics(full), read_metrics(run)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for key in LOSS_KEYS:
        assert [r[key] for r in a] == [r[key] for r in b], key
