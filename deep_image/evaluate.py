"""Evaluate the latest checkpoint of a run with its config's test protocol (§5.1):

    python -m deep_image.evaluate --workdir=DIR [--config=FILE] [--config.eval.protocol=dense]

Prints a table and writes WORKDIR/eval.json: eval/top1, eval/top5, eval/mean_per_class,
eval/headline (+ its name), and per-class accuracies. Without --config the run's saved
config.json is used; `--config.key=value` then needs --config.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from deep_image import errors

config_flags.DEFINE_config_file("config", None, "Experiment config (default: the run's).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The run's directory.")
flags.DEFINE_string("split", None, "Split to evaluate (default: config.data.eval_split).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from deep_image import config as config_lib
    from deep_image.data import sources
    from deep_image.evaluation import protocol
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
        probs, labels = protocol.split_posteriors(run.model, run.params, source, run.config)
        values, per_class = protocol.metrics(probs, labels, run.config.eval.headline)

    e = run.config.eval
    print(f"{flags.FLAGS.workdir}  step {run.step}  split {split}  protocol {e.protocol}"
          f"{' scales ' + str(tuple(e.scales)) if e.protocol == 'dense' else ''}"
          f"{' +flip' if e.flip else ''}{' +bbox' if e.bbox else ''}")
    for key in ("eval/top1", "eval/top5", "eval/mean_per_class", "eval/examples"):
        print(f"  {key:<22}{values[key]:.4f}" if key != "eval/examples"
              else f"  {key:<22}{int(values[key])}")
    print(f"  headline: {values['eval/headline_name']} = {values['eval/headline']:.4f}")
    out = {**values, "step": run.step, "split": split,
           "per_class": {n: (None if a != a else float(a))
                         for n, a in zip(run.class_names, per_class)}}
    path = os.path.join(flags.FLAGS.workdir, "eval.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=2)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")


if __name__ == "__main__":
    errors.run_app(main, required=["workdir"])
