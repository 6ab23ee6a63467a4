"""The paper's claims, judged on SynthBirds by a pre-registered rule (deep_image/study):

    python -m deep_image.reproduce --out=docs/claims                  # the study (2 h budget)
    python -m deep_image.reproduce --out=docs/claims/quick --kind=quick     # a shorter one
    python -m deep_image.reproduce --out=docs/claims/pilot --kind=pilot     # the pilot
    python -m deep_image.reproduce --out=docs/claims --plan_only --pilot=docs/claims/pilot

Trains and evaluates the runs the claims need (study/design.py: pre-trained models that pass
the health gate, each fine-tuned per arm and fine-tuning seed), `--workers` at a time, each in
its own process. Each finished run leaves a small record in OUT/results (kept in the
repository); checkpoints, rendered data and compiled programs go to --work (not kept). A rerun,
on this machine or a fresh checkout, does only what has no record: a pre-trained model is
trained again only when some of its fine-tuning runs are missing and its checkpoint is gone.
Then writes OUT/claims.md, OUT/claims.json and a plot per claim.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time

from absl import app, flags

from deep_image import errors

flags.DEFINE_string("out", None, "Report folder: claims.md, claims.json, plots, results/.")
flags.DEFINE_string("work", "runs/claims", "Work folder: checkpoints, data, compiled programs "
                    "(each kind in its own subfolder).")
flags.DEFINE_enum("kind", "full", ["full", "quick", "pilot", "toy"],
                  "Which study (study/design.py SEEDS): the full one, the quick one, the pilot "
                  "(its own seeds), or a toy (tests).")
flags.DEFINE_list("claims", ["a", "b", "c", "d", "e", "f"], "Which claims (a-f).")
flags.DEFINE_integer("workers", 2, "Runs trained at once (each on 1 thread when > 1).")
flags.DEFINE_bool("plan_only", False, "Print the runs and, with --pilot, the interval "
                  "half-width each primary comparison will reach; train nothing.")
flags.DEFINE_string("pilot", "", "A finished pilot's report folder: its spread plans the study.")
FLAGS = flags.FLAGS

# one thread per run when several run at once: 2 single-threaded runs beat one on 2 threads
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _env(work: str, workers: int) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
           "JAX_COMPILATION_CACHE_DIR": os.path.join(work, "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    if workers > 1 and "multi_thread_eigen" not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SINGLE_THREAD).strip()
    return env


def results_dir(out: str) -> str:
    return os.path.join(out, "results")


def has_checkpoint(work: str, name: str) -> bool:
    from deep_image.study.runs import run_dir
    from deep_image.training.checkpoint import checkpoint_dir
    d = checkpoint_dir(run_dir(work, name))
    return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


def to_do(runs, work: str, results: str) -> list:
    """The runs to train: those without a record, and pre-trained models whose checkpoint is
    gone while some run that fine-tunes them has no record (a fresh checkout)."""
    from deep_image.study.runs import result
    missing = [r for r in runs if result(results, r.name) is None]
    needed = {r.init for r in missing if r.init}
    again = [r for r in runs if r.name in needed and result(results, r.name) is not None
             and not has_checkpoint(work, r.name)]
    return again + missing


def same_model(before: dict, after: dict) -> bool:
    """Whether a pre-trained model trained again is the one its record describes (training is
    deterministic on one machine; its validation scores are the check)."""
    return before.get("val/top1") == after.get("val/top1")


def prerender_all(work: str, runs, workers: int) -> None:
    """Every SynthBirds split the runs read, rendered once into WORK/data (in parallel)."""
    from concurrent.futures import ProcessPoolExecutor

    from deep_image.data import sources, synthetic
    from deep_image.study.runs import EVALUATIONS, data_dir
    todo = {}
    for run in runs:
        d = run.config(work).data
        spec = sources.synthetic_spec(d)
        for split in {d.train_split, d.val_split, d.eval_split} | {
                EVALUATIONS[e][0] for e in run.evaluations}:
            todo[(spec, split)] = None
    if todo:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(synthetic.prerender, *zip(*[(spec, split, data_dir(work))
                                                      for spec, split in todo])))


class Study:
    """Trains what the plan needs, re-planning as runs finish (a pre-trained model that fails
    the gate brings in the next seed)."""

    def __init__(self, kind: str, arms, work: str, results: str, workers: int,
                 on_done=lambda: None):
        self.kind, self.arms, self.work, self.results = kind, arms, work, results
        self.workers, self.on_done = workers, on_done
        self.running, self.failed, self.started = {}, {}, set()
        self.previous = {}     # records of pre-trained models being trained again

    def plan(self):
        from deep_image.study import design
        from deep_image.study.runs import result
        return design.plan(self.kind, self.arms, lambda n: result(self.results, n))

    def run(self) -> dict[str, str]:
        """Trains every run still to do; returns {name: log path} of those that failed (and
        of the runs that depended on them)."""
        from deep_image.study import design
        # every split any run may read, rendered once up front, `workers` processes at a time
        # (as if every pre-trained model passed its gate: the fine-tuning data too)
        prerender_all(self.work, design.plan(self.kind, self.arms, lambda n: {"val/top1": 1.0}),
                      self.workers)
        try:
            self._loop()
        except KeyboardInterrupt:
            # Ctrl-C reached the runs too (one process group): each saves a checkpoint and
            # stops. A signal to this process alone reaches them as SIGTERM, which does the same.
            for proc, log in self.running.values():
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait()
                log.close()
            self.on_done()     # the wall time up to here counts
            errors.fail("interrupted: rerun the same command to resume (finished runs are "
                        "kept, unfinished ones resume from their checkpoints)")
        return self.failed

    def _ready(self, run) -> bool:
        from deep_image.study.runs import result
        return not run.init or (result(self.results, run.init) is not None
                                and run.init not in self.running
                                and has_checkpoint(self.work, run.init))

    def _loop(self) -> None:
        from deep_image.study.runs import result, run_dir
        env = _env(self.work, self.workers)
        while True:
            for name, (proc, log) in list(self.running.items()):
                if proc.poll() is not None:
                    del self.running[name]
                    log.close()
                    if proc.returncode or result(self.results, name) is None:
                        self.failed[name] = log.name
                    elif name in self.previous and not same_model(self.previous[name],
                                                                  result(self.results, name)):
                        # trained again (its checkpoint was gone) into another model: the runs
                        # that fine-tuned the first one must not be paired with new ones
                        self.failed[name] = (
                            f"trained again, it gives validation top-1 "
                            f"{result(self.results, name)['val/top1']}, not the "
                            f"{self.previous[name]['val/top1']} of its record (another machine?):"
                            f" delete the records of the runs that fine-tune it "
                            f"({self.results}/*_{name.split('_')[1]}_*) to redo them from it")
                    print(f"{'failed' if name in self.failed else 'done'}: {name}", flush=True)
                    self.on_done()
            pending = [r for r in to_do(self.plan(), self.work, self.results)
                       if r.name not in self.started]
            for run in pending:
                if run.init in self.failed:
                    self.started.add(run.name)
                    self.failed[run.name] = f"(not run: {run.init} failed)"
                elif len(self.running) < self.workers and self._ready(run):
                    self.started.add(run.name)
                    if result(self.results, run.name) is not None:
                        self.previous[run.name] = result(self.results, run.name)
                    os.makedirs(run_dir(self.work, run.name), exist_ok=True)
                    log = open(os.path.join(run_dir(self.work, run.name), "log.txt"), "a")
                    cmd = [sys.executable, "-m", "deep_image.study.runs", self.work,
                           self.results, run.to_json()]
                    self.running[run.name] = (subprocess.Popen(
                        cmd, stdout=log, stderr=log, env=env), log)
                    print(f"started: {run.name}", flush=True)
            if not self.running and not [r for r in pending if r.name not in self.started]:
                return
            time.sleep(0.5)


def analyse(kind: str, claims: list[str], results: str, work: str) -> tuple[dict, list]:
    from deep_image.data import sources
    from deep_image.study import claims as claims_lib
    from deep_image.study import design
    from deep_image.study.runs import Run, posteriors, result
    seeds = design.SEEDS[kind]
    used, gate, _ = design.gate_log(seeds, lambda n: result(results, n))
    if len(used) < seeds.pretrains:
        log = "; ".join(f"seed {g['seed']}: {g['status']}" for g in gate)
        errors.fail(f"only {len(used)} of {seeds.pretrains} pre-trained models passed the "
                    f"health gate (validation top-1 >= {seeds.gate}) and the seed list is "
                    f"spent ({log}): the recipe does not pre-train; report it, do not lower "
                    "the gate")
    replicates = [(p, f) for p in used for f in seeds.finetune]
    sizes = None
    if "c" in claims:
        config = Run("sizes", f"stage=finetune,budget={design.BUDGET_OF[kind]}").config(work)
        sizes = sources.get_source(config.data, "test").object_sizes()
    r = claims_lib.Results(replicates, lambda n: posteriors(results, n), sizes)
    analyses = {k: claims_lib.analyse(claims_lib.CLAIMS[k], r) for k in claims}
    return claims_lib.judge(analyses), gate


def projected(pilot_out: str, kind: str, claims: list[str], work: str) -> dict[str, dict]:
    """From a finished pilot: each primary comparison's per-replicate spread, and the 95%
    half-width the study of `kind` reaches with its replicate count."""
    from deep_image.study import design, stats
    analyses, _ = analyse("pilot", claims, results_dir(pilot_out), work)
    n = design.SEEDS[kind].replicates
    out = {}
    for k, a in analyses.items():
        c = a["comparisons"][0]
        sd = c["interval"]["sd"]
        out[k] = {"comparison": c["comparison"], "pilot_mean": c["interval"]["mean"],
                  "pilot_sd": sd, "pilot_replicates": c["interval"]["n"], "replicates": n,
                  "half_width": stats.half_width(sd, n)}
    return out


class Clock:
    """The study's wall time over all its invocations, in OUT/timing.json, written after every
    finished run: an invocation that is killed (a machine restart) still counts up to its
    last finished run."""

    def __init__(self, out: str):
        self.path = os.path.join(out, "timing.json")
        before = {"wall_seconds": 0.0, "invocations": 0}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                before = json.load(f)
        self.before, self.t0 = before, time.time()
        self.tick()

    def tick(self) -> dict:
        timing = {"wall_seconds": self.before["wall_seconds"] + time.time() - self.t0,
                  "invocations": self.before["invocations"] + 1}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(timing, f)
        os.replace(tmp, self.path)
        return timing


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from deep_image.study import claims as claims_lib
    from deep_image.study import design, report
    from deep_image.study.runs import result

    out = os.path.abspath(FLAGS.out)
    work = os.path.abspath(os.path.join(FLAGS.work, FLAGS.kind))
    results = results_dir(out)
    unknown = [c for c in FLAGS.claims if c not in claims_lib.CLAIMS]
    if unknown:
        errors.fail(f"--claims: no claim {', '.join(unknown)}; choose among "
                    f"{', '.join(claims_lib.CLAIMS)}")
    claims = sorted(FLAGS.claims)
    arms = sorted({a for c in claims for a in claims_lib.CLAIMS[c].arms})
    if FLAGS.plan_only:
        runs = design.plan(FLAGS.kind, arms, lambda n: result(results, n))
        todo = to_do(runs, work, results)
        print(f"{len(runs)} runs planned so far ({len(todo)} to do; pre-trained models that "
              "fail the gate add runs)")
        if FLAGS.pilot:
            for k, p in projected(os.path.abspath(FLAGS.pilot), FLAGS.kind, claims,
                                  work).items():
                print(f"claim {k}: {p['comparison']}: pilot {100 * p['pilot_mean']:.1f} "
                      f"(sd {100 * p['pilot_sd']:.1f} over {p['pilot_replicates']} "
                      f"replicates) -> +-{100 * p['half_width']:.1f} points over "
                      f"{p['replicates']} replicates")
        return
    os.makedirs(results, exist_ok=True)
    clock = Clock(out)
    failed = Study(FLAGS.kind, arms, work, results, FLAGS.workers, clock.tick).run()
    timing = clock.tick()
    if failed:
        for name, log in failed.items():
            print(f"error: run {name} failed; its log: {log}", file=sys.stderr)
        errors.fail(f"{len(failed)} run(s) failed; fix the cause and rerun the same command "
                    "(finished runs are kept)")
    analyses, gate = analyse(FLAGS.kind, claims, results, work)
    meta = {"command": "python -m deep_image.reproduce " + " ".join(sys.argv[1:]),
            "kind": FLAGS.kind, "seeds": dataclasses.asdict(design.SEEDS[FLAGS.kind]), "claims": claims,
            "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
            **timing}
    runs = design.plan(FLAGS.kind, arms, lambda n: result(results, n))
    records = [result(results, r.name) for r in runs]
    path = report.write(out, claims_lib.CLAIMS, analyses, gate, records, meta)
    for key, a in analyses.items():
        c = a["comparisons"][0]
        print(f"claim {key}: {a['verdict']}  ({c['comparison']}: "
              f"{report.pct(c['interval'])} points)")
    print(f"wrote {path} ({timing['wall_seconds'] / 60:.1f} min of wall time in all)")


if __name__ == "__main__":
    errors.run_app(main, required=["out"])
