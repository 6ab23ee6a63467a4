"""End-to-end training runs of the tiny synthetic config, as a user runs them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

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
    assert all(r["train/images_per_second"] > 0 for r in train)
    # the rate: 0.01 until the decision at step 40, then 0.01 x the scale decided there
    scale = evals[0]["schedule/lr_scale"]
    assert [r["train/lr"] for r in train] == pytest.approx([0.01] * 8 + [0.01 * scale] * 8,
                                                          rel=1e-5)
    for r in evals:
        assert r["eval/examples"] == 50 and r["val/examples"] == 40   # each example once
        for prefix, n in (("eval", 50), ("val", 40)):   # whole examples: k / n
            for key in ("top1", "top5"):
                assert r[f"{prefix}/{key}"] * n == pytest.approx(round(r[f"{prefix}/{key}"] * n))
            assert r[f"{prefix}/top1"] <= r[f"{prefix}/top5"]
            assert r[f"{prefix}/top5_error"] == pytest.approx(1 - r[f"{prefix}/top5"])
        assert r["val/headline"] == r["val/top1"]       # the synthetic benchmark's metric
    last = evals[-1]
    assert (f"final test top-1: {last['eval/top1']:.4f}  top-5: {last['eval/top5']:.4f}  "
            f"mean per class: {last['eval/mean_per_class']:.4f}  (step 80)") in proc.stdout
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(workdir / "tensorboard"))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["40", "80"]
    assert json.loads((workdir / "config.json").read_text())["model"]["variant"] == "vgg11"


def test_the_metrics_writer_does_not_import_torch_and_torch_still_imports(tmp_path):
    """tensorboardX imports torch when it is installed (2.6 s of every run's start here):
    the writer keeps it out, writes its event file, and a later `import torch` still works."""
    pytest.importorskip("torch")
    script = ("import sys\n"
              "from deep_image.training.metrics_writer import MetricsWriter\n"
              f"w = MetricsWriter({str(tmp_path)!r}, start_step=0, total_steps=1, batch_size=1)\n"
              "w.write(1, {'train/loss': 2.0}); w.close()\n"
              "assert 'torch' not in sys.modules, 'tensorboardX imported torch'\n"
              "import torch\n"
              "print(torch.ones(2).sum().item())\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "2.0"
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))


def test_train_rate_is_the_images_since_the_previous_report_over_its_seconds(monkeypatch):
    """Images/s at a log point: (steps since the last call) x batch / (seconds since it); the
    first call counts from the start step (a resumed run's, not 0)."""
    from deep_image.training import metrics_writer
    clock = [100.0]
    monkeypatch.setattr(metrics_writer.time, "perf_counter", lambda: clock[0])
    w = metrics_writer.MetricsWriter("unused", start_step=10, total_steps=100, batch_size=4,
                                     progress=False, enabled=False)
    clock[0] = 102.0
    assert w.train_rate(15) == pytest.approx((15 - 10) * 4 / 2.0)    # 10 images/s
    clock[0] = 102.5
    assert w.train_rate(25) == pytest.approx((25 - 15) * 4 / 0.5)    # 80 images/s
    w.close()
