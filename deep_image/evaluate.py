"""Evaluate the latest checkpoint of a run with its config's test protocol (§5.1):

    python -m deep_image.evaluate --workdir=DIR [--config=FILE] [--config.eval.protocol=dense]

Prints a table and writes WORKDIR/eval.json: eval/top1, eval/top5, eval/mean_per_class,
eval/headline (+ its name), the split and protocol, and per-class accuracies. The default split
is the reported one (config.data.eval_split); evaluate it once, for reporting, never to choose. Without --config the run's saved
config.json is used; `--config.key=value` then needs --config.
"""

from __future__ import annotations

import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags

from deep_image import errors
from deep_image.evaluation.metrics import HEADLINE_NAMES

config_flags.DEFINE_config_file("config", None, "Experiment config (default: the run's).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The run's directory.")
flags.DEFINE_string("split", None, "Split to evaluate (default: config.data.eval_split).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from deep_image import config as config_lib
    from deep_image.data import sources
    from deep_image.evaluation.evaluator import Evaluator, Protocol
    from deep_image.training.checkpoint import Trained

    with errors.one_line():
        given = flags.FLAGS.config if flags.FLAGS["config"].present else None
        if given is not None:
            config_lib.check(given)
        run = Trained(flags.FLAGS.workdir, given)
        split = flags.FLAGS.split or run.config.data.eval_split
        source = sources.get_source(run.config.data, split)
        if list(source.class_names) != run.class_names:
            raise errors.ConfigError("the dataset's classes differ from the checkpoint's: "
                                     "evaluate with the config the model was trained with")
        protocol = Protocol.of(run.config)
        headline = run.config.eval.headline
        counts = Evaluator(run.model, run.config, source, protocol, cache=False).counts(
            run.params, run.stats)
        values = counts.summary("eval", headline)

    print(f"{flags.FLAGS.workdir}  step {run.step}  split {split}  {protocol.describe()}")
    for key in ("eval/top1", "eval/top5", "eval/mean_per_class"):
        print(f"  {key:<22}{values[key]:.4f}")
    print(f"  {'eval/examples':<22}{int(values['eval/examples'])}")
    print(f"  headline: {HEADLINE_NAMES[headline]} = {values['eval/headline']:.4f}")
    out = {**values, "eval/headline_name": HEADLINE_NAMES[headline], "step": run.step,
           "split": split, "protocol": protocol.describe(),
           "per_class": {n: (None if a != a else float(a))
                         for n, a in zip(run.class_names, counts.per_class_accuracy())}}
    path = os.path.join(flags.FLAGS.workdir, "eval.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=2)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")


if __name__ == "__main__":
    errors.run_app(main, required=["workdir"], library_level=logging.ERROR)
