"""Average the softmax posteriors of several trained models (§4.2, §5.4):

    python -m deep_image.ensemble --workdirs=A,B[,...] [--config=FILE] [--out=PATH]
        [--posteriors=PATH.npz]

Every member is scored with its own config's model and test protocol (or --config's protocol,
which then applies to all), on the same split of the same dataset; the members' classes and
examples must match. Prints each member's metrics and the ensemble's, and writes them as JSON
(default: ensemble.json beside the first workdir).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from deep_image import errors

config_flags.DEFINE_config_file("config", None, "Protocol for every member (default: each "
                                "member's own config).", lock_config=True)
flags.DEFINE_list("workdirs", None, "The members' run directories.")
flags.DEFINE_string("split", None, "Split (default: the first member's eval_split).")
flags.DEFINE_string("out", None, "Where to write the JSON.")
flags.DEFINE_string("posteriors", None, "Also write every member's and the ensemble's "
                    "posteriors [N, C] and the labels to this .npz file.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from deep_image.data import sources
    from deep_image.evaluation import metrics
    from deep_image.evaluation.evaluator import Evaluator, Protocol
    from deep_image.training.checkpoint import Trained

    workdirs = flags.FLAGS.workdirs
    with errors.one_line():
        if len(workdirs) < 2:
            raise errors.ConfigError("--workdirs needs at least two runs to ensemble")
        members, rows, total, labels, first, saved = [], {}, None, None, None, {}
        for wd in workdirs:
            run = Trained(wd)
            if flags.FLAGS["config"].present:
                run.config.eval = flags.FLAGS.config.eval
            if first is None:
                first = run
            elif run.class_names != first.class_names:
                raise errors.ConfigError(f"{wd} was trained on other classes than "
                                         f"{workdirs[0]}; ensemble models of one dataset")
            split = flags.FLAGS.split or first.config.data.eval_split
            source = sources.get_source(run.config.data, split)
            probs, labs = Evaluator(run.model, run.config, source, Protocol.of(run.config),
                                    cache=False).posteriors(run.params, run.stats)
            if labels is not None and not np.array_equal(labels, labs):
                raise errors.ConfigError(f"{wd} sees other test examples than {workdirs[0]}")
            labels = labs
            total = probs if total is None else total + probs
            saved[wd] = probs
            rows[wd] = metrics.of_posteriors(probs, labs).summary("eval", headline(first))
            members.append(wd)
        # §4.2, §5.4: the ensemble averages the members' softmax posteriors (not logits)
        rows["ensemble"] = metrics.of_posteriors(total / len(members), labels).summary(
            "eval", headline(first))
        if flags.FLAGS.posteriors:
            saved["ensemble"] = total / len(members)
            np.savez(flags.FLAGS.posteriors, labels=labels, members=np.stack(
                [saved[wd] for wd in members]), ensemble=saved["ensemble"])

    name = metrics.HEADLINE_NAMES[headline(first)]
    print(f"{'model':<40}{'top-1':>8}{'top-5':>8}{'mean/cls':>10}  {name}")
    for key, v in rows.items():
        print(f"{key[-40:]:<40}{v['eval/top1']:>8.4f}{v['eval/top5']:>8.4f}"
              f"{v['eval/mean_per_class']:>10.4f}  {v['eval/headline']:.4f}")
    out = flags.FLAGS.out or os.path.join(os.path.dirname(os.path.abspath(workdirs[0])),
                                          "ensemble.json")
    with open(out, "w") as f:
        json.dump({"members": members, "split": split, "headline": name, "metrics": rows}, f,
                  indent=2)
    print(f"wrote {out}")


def headline(run) -> str:
    return run.config.eval.headline


if __name__ == "__main__":
    errors.run_app(main, required=["workdirs"], library_level=logging.ERROR)
