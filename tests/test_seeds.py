"""python -m deep_image.study.seeds: the per-seed summary of one experiment, on workdirs laid out
as the training loop writes them (config.json, metrics.jsonl)."""

import json
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import cli, tiny_config
from deep_image.study import seeds


def make_run(root, name, seed, top1, *, step=40, last_step=40, **overrides):
    """A finished (or, with last_step < step, unfinished) run's workdir."""
    workdir = os.path.join(root, name)
    os.makedirs(workdir)
    config = tiny_config(seed=seed, total_steps=step, **overrides)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for s in range(20, last_step + 1, 20):
            f.write(json.dumps({"step": s, "train/loss": 1.0}) + "\n")
            final = s == last_step
            f.write(json.dumps({"step": s, "val/headline": 0.5 + 0.1 * final,
                                "eval/top1": top1 if final else 0.1,
                                "eval/top5": 0.9, "eval/mean_per_class": top1 - 0.01}) + "\n")
    return workdir


def test_mean_interval_and_range_over_seeds(tmp_path):
    top1 = [0.91, 0.94, 0.925]
    dirs = [make_run(tmp_path, f"s{s}", s, t, progress_bar=bool(s % 2))
            for s, t in enumerate(top1)]
    summary = seeds.summarize(dirs)
    got = summary["eval/top1"]
    lo, hi = scipy_stats.t.interval(0.95, 2, loc=np.mean(top1), scale=scipy_stats.sem(top1))
    assert (got["mean"], got["low"], got["high"]) == pytest.approx((np.mean(top1), lo, hi))
    assert got["min"] == 0.91 and got["max"] == 0.94 and got["n"] == 3
    assert [r["seed"] for r in summary["runs"]] == [0, 1, 2]
    assert [r["step"] for r in summary["runs"]] == [40, 40, 40]   # the last evaluation
    assert summary["val/headline"]["mean"] == pytest.approx(0.6)
    assert summary["split"] == "test"

    assert seeds.curve(dirs[1]) == ([20, 40], [0.5, 0.6])

    out, png = tmp_path / "summary.json", tmp_path / "curves.png"
    r = cli("deep_image.study.seeds", *dirs, f"--json={out}", f"--plot={png}")
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "92.50" in r.stdout and f"[{100 * lo:.2f}, {100 * hi:.2f}]" in r.stdout
    assert json.loads(out.read_text())["eval/top1"]["mean"] == pytest.approx(np.mean(top1))


def test_an_epoch_counted_run_is_summarized_with_a_warning(tmp_path, capsys):
    dirs = [make_run(tmp_path, f"s{s}", s, 0.9, step=0) for s in (0, 1)]
    assert seeds.summarize(dirs)["eval/top1"]["mean"] == pytest.approx(0.9)
    assert "not checked" in capsys.readouterr().err


REFUSALS = {"other_lr": "optimizer.learning_rate", "same_seed": "seeds repeat",
            "unfinished": "is not finished", "missing": "does not exist"}


def _refused_pair(tmp_path, case):
    a = make_run(tmp_path, "a", 0, 0.9)
    b = {"other_lr": lambda: make_run(tmp_path, "b", 1, 0.9, optimizer__learning_rate=0.1),
         "same_seed": lambda: make_run(tmp_path, "b", 0, 0.9),
         "unfinished": lambda: make_run(tmp_path, "b", 1, 0.9, step=60, last_step=40),
         "missing": lambda: str(tmp_path / "nothing")}[case]()
    return a, b


@pytest.mark.parametrize("case", list(REFUSALS))
def test_runs_that_are_not_seeds_of_one_finished_experiment_are_refused(tmp_path, case,
                                                                        capsys):
    a, b = _refused_pair(tmp_path, case)
    with pytest.raises(seeds.SeedsError, match=REFUSALS[case]):
        seeds.summarize([a, b])
    # the command: exit code 2 and an error line naming the problem, no table
    with pytest.raises(SystemExit) as exit_:
        seeds.main([a, b])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert any(line.startswith("error: ") and REFUSALS[case] in line
               for line in err.splitlines()), err


def test_the_command_refuses_with_exit_code_2_and_an_error_line(tmp_path):
    a, b = _refused_pair(tmp_path, "unfinished")
    r = cli("deep_image.study.seeds", a, b)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == ""
    assert f"error: the run in {b} is not finished" in r.stderr, r.stderr


def test_a_repeated_final_evaluation_counts_its_last_record(tmp_path):
    """A run whose final step was evaluated twice (a rerun of its train command appends the
    evaluation again) is summarized by the later record, the one `curve` also keeps."""
    dirs = [make_run(tmp_path, f"s{s}", s, 0.9) for s in (0, 1)]
    with open(os.path.join(dirs[0], "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 40, "val/headline": 0.7, "eval/top1": 0.95,
                            "eval/top5": 0.9, "eval/mean_per_class": 0.94}) + "\n")
    summary = seeds.summarize(dirs)
    assert [r["eval/top1"] for r in summary["runs"]] == [0.95, 0.9]
    assert summary["eval/top1"]["mean"] == pytest.approx(0.925)
    assert summary["val/headline"]["mean"] == pytest.approx(0.65)      # (0.7 + 0.6) / 2
    assert seeds.curve(dirs[0]) == ([20, 40], [0.5, 0.7])
