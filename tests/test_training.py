"""End-to-end training runs of the tiny synthetic config, as a user runs them."""

import json
import os

import numpy as np

from conftest import run_train


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_short_run_lowers_loss_and_writes_everything(tmp_path):
    workdir = tmp_path / "run"
    # Memorizing 32 images in 80 steps: the loss must fall far below chance (ln 16 = 2.77).
    proc = run_train(workdir, "--config.total_steps=80", "--config.data.synthetic.train_size=32",
                     "--config.data.augment.crop=False", "--config.data.augment.flip=False",
                     "--config.model.dropout_rate=0.0", "--config.eval_every_steps=40",
                     "--config.checkpoint_every_steps=40")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final test top-1:" in proc.stdout
    records = _records(workdir)
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/top1" in r]
    assert [r["step"] for r in train] == list(range(5, 81, 5))
    assert [r["step"] for r in evals] == [40, 80]
    losses = [r["train/loss"] for r in train]
    assert np.mean(losses[-2:]) < 0.6 * np.log(16) < np.mean(losses[1:3]), losses
    for key in ("train/lr", "train/images_per_second"):
        assert key in train[-1]
    for key in ("eval/top1", "eval/top5", "eval/mean_per_class", "val/top1"):
        assert 0.0 <= evals[-1][key] <= 1.0
    assert evals[-1]["eval/examples"] == 50          # every test example counted once
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(workdir / "tensorboard"))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["40", "80"]
    assert json.loads((workdir / "config.json").read_text())["model"]["variant"] == "vgg11"
