"""`train_and_evaluate(config, workdir)`: one training run, read top to bottom.

Resume order: the workdir's latest checkpoint, else scratch. SIGTERM or SIGINT (what SLURM sends
before preemption, and Ctrl-C) finishes the current step, saves a checkpoint and returns.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from deep_image import config as config_lib
from deep_image import xla_flags
from deep_image.data import device_cache, pipeline, sources
from deep_image.evaluation import metrics as metrics_lib
from deep_image.evaluation.evaluator import Evaluator, Protocol
from deep_image.parallel import mesh as mesh_lib
from deep_image.training import finetune
from deep_image.training import state as state_lib
from deep_image.training import setup as setup_lib
from deep_image.training import step as step_lib
from deep_image.training.checkpoint import Checkpointer, checkpoint_dir
from deep_image.training.metrics_writer import MetricsWriter
from deep_image.training.preemption import StopNotice


class WorkdirError(OSError):
    pass


def prepare_workdir(workdir: str) -> str:
    """Creates the workdir and proves it writable before any work is done."""
    if not workdir:
        raise WorkdirError("--workdir is required: the directory for checkpoints and metrics")
    workdir = os.path.abspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"workdir {workdir} is not writable ({e.strerror}); pass a "
                           "--workdir you can write to") from None
    return workdir


def total_steps(config, train_size: int) -> int:
    if config.total_steps > 0:
        return int(config.total_steps)
    return max(1, math.ceil(config.num_epochs * train_size / config.batch_size))


def _write_config(workdir: str, config) -> None:
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json(indent=2))
    os.replace(tmp, path)


def train_and_evaluate(config, workdir: str, resume_step: int | None = None,
                       notice: StopNotice | None = None) -> dict:
    """Trains, evaluates and checkpoints; returns the last evaluation's metrics. A rerun of a
    finished run returns its last evaluation (with `finished`); `resume_step` resumes from an
    earlier checkpoint than the latest (the later ones are moved aside). `notice` (installed
    by the entry point before anything else) tells when to save and stop."""
    # ------------------------------------------------------------------ checks
    config_lib.check(config)

    # ------------------------------------------------------------------ mesh
    mesh = mesh_lib.make_mesh(config.mesh)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    if config.batch_size % mesh.size:
        raise config_lib.ConfigError(f"config.batch_size={config.batch_size} does not split "
                                     f"over the {mesh.size} devices of the mesh; make it a "
                                     "multiple")
    per_device = config.batch_size // mesh.size
    if per_device % config.accumulate_steps:
        raise config_lib.ConfigError(
            f"config.batch_size={config.batch_size} gives {per_device} rows per device on the "
            f"{mesh.size} devices, which do not split into config.accumulate_steps="
            f"{config.accumulate_steps} micro-batches; make batch_size a multiple of "
            f"{mesh.size * config.accumulate_steps}")
    if config.eval_batch_size % mesh.size:   # padding examples are masked: round up
        rounded = -(-config.eval_batch_size // mesh.size) * mesh.size
        logging.warning("config.eval_batch_size %d -> %d, to split over %d devices",
                        config.eval_batch_size, rounded, mesh.size)
        config.eval_batch_size = rounded

    # ------------------------------------------------------------------ input
    pidx, pcount = jax.process_index(), jax.process_count()
    train_source = sources.get_source(config.data, config.data.train_split)
    eval_source = sources.get_source(config.data, config.data.eval_split)
    val_source = (sources.get_source(config.data, config.data.val_split)
                  if config.data.val_split else None)
    class_names = list(train_source.class_names)
    num_classes = len(class_names)
    steps = total_steps(config, len(train_source))

    def put(batch):
        return {k: jax.make_array_from_process_local_data(batch_sharding, v)
                for k, v in batch.items()}

    cache_plan = None     # placement 'device': where the training split goes (after the state)

    def train_batches(start_step: int = 0):
        """This process's training batches on the devices, `device_prefetch` ahead; with the
        device cache, the cache (the step draws its batches from it)."""
        if cache_plan is not None:
            return device_cache.DeviceStream(lambda: device_cache.build(
                train_source, cache_plan, mesh, pipeline.usable_cpus()))
        return iter(pipeline.on_devices(pipeline.train_dataset(
            train_source, config, process_index=pidx, process_count=pcount,
            start_step=start_step, backend=jax.default_backend()), put,
            config.data.device_prefetch))

    # ------------------------------------------------------------------ model, layout, state
    if mesh.size > 1 and config.optimizer.grad_clip_norm > 0:
        raise config_lib.ConfigError("config.optimizer.grad_clip_norm needs the global gradient "
                                     "norm, which the parallel step does not compute; set it "
                                     "to 0 or train on one device")
    run = setup_lib.build(config, num_classes, mesh=mesh)
    if config.data.placement == "device":   # sized against what the state left: still before
        try:                                  # anything is written
            cache_plan = device_cache.plan(len(train_source), config, mesh, run.state)
        except device_cache.DeviceCacheError as e:
            raise config_lib.ConfigError(str(e)) from None
        run.train_step = step_lib.build_train_step(run.model, run.tx, config, mesh, run.layout,
                                                   run.state, cache_plan)
    workdir = prepare_workdir(workdir)   # after sources and layout: bad input writes nothing
    logging.info("%s", xla_flags.describe())
    logging.info("%s width %g: %s parameters, %d classes, %dx%d crops of %dx%d images",
                 config.model.variant, config.model.width, f"{run.model.num_params():,}",
                 num_classes, config.data.crop, config.data.crop, config.data.scale,
                 config.data.scale)
    if mesh.size > 1:
        logging.info("mesh %s, parallelism %s: head layers split over %s", dict(mesh.shape),
                     config.parallelism, run.layout.fc_axis or "no axis")
    if cache_plan is not None:
        logging.info("%s", cache_plan.describe())

    # ------------------------------------------------------------------ checkpoint / resume
    ckpt_dir = checkpoint_dir(workdir)
    if resume_step is not None:
        discard_checkpoints_after(ckpt_dir, resume_step, workdir)
    ckpt = Checkpointer(ckpt_dir, keep=config.keep_checkpoints)
    own_notice = notice is None
    notice = notice or StopNotice().install()
    try:   # from here on every exit path closes the checkpointer (pending saves finish)
        return _run(config, workdir, ckpt, run, train_source, train_batches, sources_by_prefix={
            "val": val_source, "eval": eval_source}, steps=steps, notice=notice)
    finally:
        ckpt.close()
        if own_notice:
            notice.uninstall()


def _run(config, workdir, ckpt, run, train_source, train_batches, *, sources_by_prefix, steps,
         notice) -> dict:
    opened = []       # every training iterator, closed at the end (prefetch threads, workers)

    def batches(start_step: int = 0):
        opened.append(train_batches(start_step))
        return opened[-1]

    try:
        return _train(config, workdir, ckpt, run, train_source, batches(), batches,
                      sources_by_prefix=sources_by_prefix, steps=steps, notice=notice)
    finally:
        for it in opened:
            it.close()


def _train(config, workdir, ckpt, run, train_source, train_iter, train_batches, *,
           sources_by_prefix, steps, notice) -> dict:
    state, shardings, model, layout, mesh = (run.state, run.shardings, run.model, run.layout,
                                             run.mesh)
    is_main = jax.process_index() == 0
    pidx, pcount = jax.process_index(), jax.process_count()
    replicated = mesh_lib.replicated(mesh)
    class_names = list(train_source.class_names)
    canonical = jax.jit(functools.partial(layout.from_stored, xp=jnp), out_shardings=replicated)
    if ckpt.latest_step() is None and config.init_from:   # resume wins over init_from
        state = finetune.warm_start(state, shardings.params, layout, config.init_from,
                                    canonical, model, class_names)

    # ------------------------------------------------------------------ steps
    train_step = run.train_step
    # each process saved its own position in the data; on another process count the stream
    # restarts at the step's global batch instead
    # (the device cache's position is the step: nothing to save; a checkpoint of the other
    # placement has no position this stream could take either)
    saved = ckpt.meta() or {}
    saved_processes = saved.get("processes", pcount)
    placement = config.data.placement
    same_stream = saved_processes == pcount and saved.get("placement", "host") == placement
    data_state = train_iter if placement == "host" else None
    restored, start = ckpt.restore(state_lib.abstract_with_shardings(shardings, state),
                                   data_state if same_stream else None, layout=layout)
    if restored is not None:
        state = restored
        logging.info("resumed from %s at step %d", ckpt.directory, start)
        if placement == "host" and not same_stream:
            why = (f"was written by {saved_processes} processes, this run has {pcount}"
                   if saved_processes != pcount else
                   f"was written with config.data.placement={saved.get('placement')!r}")
            logging.warning("the checkpoint %s: the data stream restarts at global batch %d",
                            why, start)
            train_iter = data_state = train_batches(start)
    start = int(jax.device_get(state.step))
    if start >= steps:
        return finished_result(config, workdir, start, steps)
    if jax.process_count() == 1 and notice.pending():   # told to stop before the first step
        logging.warning("stopped before step %d by a notice; nothing to save", start + 1)
        return {"preempted": True, "step": start}
    if is_main:
        _write_config(workdir, config)
    meta = {"class_names": class_names, "num_classes": len(class_names),
            "config": json.loads(config.to_json()),
            "layout": layout.describe(), "processes": pcount, "placement": placement}
    # Periodic evaluation: one centre crop (quick). Only the validation split feeds the
    # schedule; the reported split is scored for curves, and no decision reads it.
    headline = config.eval.headline
    evaluators = {prefix: Evaluator(model, config, source, Protocol.quick(config), mesh=mesh,
                                    process_index=pidx, process_count=pcount)
                  for prefix, source in sources_by_prefix.items() if source is not None}
    update_plateau = jax.jit(lambda s, e: state_lib.update_plateau(run.plateau_tx, s, e),
                             in_shardings=(shardings, replicated), out_shardings=shardings,
                             donate_argnums=0)

    writer = MetricsWriter(workdir, start_step=start, total_steps=steps,
                           batch_size=config.batch_size, progress=config.progress_bar,
                           enabled=is_main)

    def run_eval(step: int, final: bool) -> dict:
        t0 = time.perf_counter()
        params = canonical(state.ema if config.eval.use_ema else state.params)
        values, parts = {}, []
        for prefix, evaluator in evaluators.items():
            if prefix == "eval" and not (final or config.curves_on_eval_split):
                continue
            values.update(evaluator.run(params, prefix, headline, state.stats))
            parts.append(f"{config.data.val_split} (schedule) {headline} "
                         f"{values['val/headline']:.4f}" if prefix == "val" else
                         f"{config.data.eval_split} (reported{'' if final else ', curves only'})"
                         f" top-1 {values['eval/top1']:.4f}  top-5 {values['eval/top5']:.4f}  "
                         f"mean per class {values['eval/mean_per_class']:.4f}")
        values["eval/seconds"] = time.perf_counter() - t0
        writer.print(f"step {step}: " + " | ".join(parts))
        return values

    # ------------------------------------------------------------------ loop
    last_eval: dict = {}
    pending: list[dict] = []
    step = start
    preempted = False
    try:
        while step < steps:
            state, metrics = train_step(state, next(train_iter))
            pending.append(metrics)
            step += 1
            writer.step()
            done = step == steps
            stop = not done and notice.stop_at(step)   # the same step on every process
            evaluate = step % config.eval_every_steps == 0 or done
            save = step % config.checkpoint_every_steps == 0 or done or stop
            if step % config.log_every_steps == 0 or evaluate or save:
                # the loop's only routine host sync: before anything is logged, evaluated
                # or saved, every step since the last sync must have stayed finite
                fetched = jax.device_get(pending)
                pending = []
                check_finite(fetched, step, ckpt, config)
                values = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]
                          if k != "train/finite"}
                values["train/images_per_second"] = writer.train_rate(step)
                writer.write(step, values)
                writer.progress(loss=values["train/loss"], lr=values["train/lr"],
                                img_s=round(values["train/images_per_second"], 1))
            if evaluate:
                last_eval = run_eval(step, final=done)
                if ("val" in evaluators and config.schedule.plateau
                        and step > config.schedule.decide_after_step):
                    # §5.1, decided on validation only
                    state = update_plateau(state, np.float32(
                        metrics_lib.decision_error(last_eval, "val", headline)))
                last_eval["schedule/lr_scale"] = float(jax.device_get(state.plateau.scale))
                writer.write(step, last_eval)
            if save:
                ckpt.save(step, state, data_state, meta, wait=done or stop)
            if stop:
                preempted = True
                break
    finally:
        writer.close()
    if preempted:
        logging.warning("stopped at step %d of %d by a notice; the checkpoint is saved: run "
                        "the same command to resume", step, steps)
        return {"preempted": True, "step": step}
    return {**last_eval, "step": step, "split": config.data.eval_split}


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or parameters: the message names the step, the last
    good checkpoint and what to change."""


def check_finite(fetched: list[dict], step: int, ckpt: Checkpointer, config) -> None:
    """Raises DivergenceError if any of the steps just fetched (the last is `step`) left a
    non-finite loss or parameters; nothing of that state has been saved."""
    bad = [i for i, m in enumerate(fetched) if not bool(m["train/finite"])]
    if not bad:
        return
    first = step - len(fetched) + 1 + bad[0]
    loss = float(fetched[bad[0]]["train/loss"])
    kept = ckpt.all_steps()
    fix = (f"lower config.optimizer.learning_rate (now {config.optimizer.learning_rate:g}) or "
           "set config.schedule.warmup_steps")
    if kept:
        where = (f"the last good checkpoint is step {kept[-1]} in {ckpt.directory} (no "
                 f"non-finite state is ever saved; kept: {', '.join(map(str, kept))}); {fix}, "
                 "then rerun the same command to resume from it (if it diverges again at once, "
                 f"that state was already on its way: add --resume_step={kept[0]})")
    else:
        where = f"no checkpoint was saved before it; {fix}, then rerun the same command"
    raise DivergenceError(f"training diverged at step {first} (loss {loss:g}, or non-finite "
                          f"parameters); {where}")


def finished_result(config, workdir: str, step: int, steps: int) -> dict:
    """A rerun of a finished run: its last evaluation, read back from metrics.jsonl."""
    logging.info("the run in %s is finished (step %d of %d): nothing to train", workdir, step,
                 steps)
    last = {}
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if "eval/top1" in record and record["step"] <= step:
                    last = record
    return {**last, "step": step, "split": config.data.eval_split, "finished": True}


def discard_checkpoints_after(ckpt_dir: str, step: int, workdir: str) -> None:
    """For --resume_step: moves the checkpoints after `step` to WORKDIR/discarded_checkpoints
    (kept, not deleted), so the run continues from `step`."""
    if not os.path.isdir(os.path.join(ckpt_dir, str(step))):
        raise config_lib.ConfigError(f"--resume_step={step}: there is no checkpoint {step} in "
                                     f"{ckpt_dir}")
    later = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit() and int(n) > step)
    if not later or jax.process_index() != 0:
        return
    aside = os.path.join(workdir, "discarded_checkpoints")
    os.makedirs(aside, exist_ok=True)
    for n in later:
        os.replace(os.path.join(ckpt_dir, str(n)), os.path.join(aside, f"{n}.{int(time.time())}"))
    logging.warning("--resume_step=%d: moved checkpoints %s to %s", step, later, aside)
