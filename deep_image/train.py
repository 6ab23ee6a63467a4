"""Train a model: `python -m deep_image.train --config=experiments/NAME.py --workdir=DIR`.

Any config value can be overridden with `--config.key=value`; the config is locked, so a
misspelled key is an error. Running the same command again resumes from the latest checkpoint.
Exit codes: 0 finished, 2 an error with a one-line message, 75 stopped by a notice (SIGTERM,
Ctrl-C) after saving a checkpoint: run again (or let SLURM requeue) to resume.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from deep_image import errors
from deep_image.parallel import distributed

config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.DEFINE_integer("resume_step", None, "Resume from this checkpoint instead of the latest "
                     "(later ones are moved to WORKDIR/discarded_checkpoints).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    distributed.initialize()      # before anything touches a JAX backend
    from deep_image.training import loop
    from deep_image.training.preemption import REQUEUE_EXIT_CODE, StopNotice
    notice = StopNotice().install()   # a notice counts from here, compilation included
    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir
    with errors.one_line(log_dir=os.path.abspath(workdir) if workdir else None):
        result = loop.train_and_evaluate(config, workdir, flags.FLAGS.resume_step, notice)
    if result.get("preempted"):
        print(f"preempted at step {result['step']}; checkpoint saved, rerun to resume")
        sys.exit(REQUEUE_EXIT_CODE)
    if result.get("finished"):
        print(f"the run in {workdir} is already finished (step {result['step']})")
        if "eval/top1" not in result:
            return
    print(f"final {result['split']} top-1: {result['eval/top1']:.4f}  top-5: "
          f"{result['eval/top5']:.4f}  mean per class: {result['eval/mean_per_class']:.4f}  "
          f"(step {result['step']})")


def run():
    errors.run_app(main, required=["config", "workdir"])


if __name__ == "__main__":
    run()
