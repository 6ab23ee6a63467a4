"""Bad input fails fast: one line on stderr naming the problem, exit code 2, nothing written."""

import pytest

from conftest import run_train


def _one_line_error(proc):
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("override,expected", [
    ("--config.modle.width=2", "'modle'"),
    ("--config.model.widht=2", "'widht'"),
    ("--config.data.source=cub_typo", "config.data.source='cub_typo' is not a dataset"),
    ("--config.model.variant=vgg99", "config.model.variant='vgg99' is not a model"),
    ("--config.model.width=wide", "could not convert"),
    ("--config.sharding_rules=(('^conv', (None, None, None, 'model')),)", "use at most 1 entries"),
    ("--config.parallelism=model_parallel", "choose data or model_data"),
    ("--config.mesh=(('data', 3), ('model', 1))", "needs 3 devices, JAX sees 1"),
    ("--config.total_steps=-1", "neither may be negative"),
])
def test_bad_config_names_the_problem_and_writes_nothing(tmp_path, override, expected):
    workdir = tmp_path / "never_created"
    line = _one_line_error(run_train(workdir, override))
    assert expected in line
    assert not workdir.exists()


def test_missing_config_file(tmp_path):
    line = _one_line_error(run_train(tmp_path / "w", config="experiments/no_such.py"))
    assert "no_such.py" in line


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    line = _one_line_error(run_train(blocker / "run"))
    assert "not writable" in line and str(blocker) in line


def test_a_device_cache_that_does_not_fit_names_the_sizes_and_writes_nothing(tmp_path):
    workdir = tmp_path / "never_created"
    line = _one_line_error(run_train(workdir, "--config.data.placement=device",
                                     "--config.data.device_memory=100000"))
    assert "the training split needs 1.2 MiB" in line and "placement='host'" in line
    assert not workdir.exists()
