"""The paper's claims, reproduced or refuted on SynthBirds, with seeds and intervals:

    python -m deep_image.reproduce --out=docs/claims [--quick] [--claims=a,b,...] [--seeds=3]

Trains and evaluates the runs the claims need (deep_image/study/claims.py; each run is
`experiments/claims.py` with a seed), `--workers` at a time, each in its own process; caches
every finished run under OUT/runs (a rerun does only what is missing, an interrupted study
resumes, an interrupted run resumes from its checkpoints); then writes OUT/claims.md,
OUT/claims.json and a plot per claim. SynthBirds splits are rendered once into OUT/data and
shared by all runs, as are compiled programs (OUT/jax_cache).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time

from absl import app, flags

from deep_image import errors

flags.DEFINE_string("out", None, "Output folder: runs, data, claims.md, claims.json, plots.")
flags.DEFINE_bool("quick", False, "A shorter study (fewer steps, 2 seeds); verdicts marked.")
flags.DEFINE_list("claims", ["a", "b", "c", "d", "e", "f"], "Which claims (a-f).")
flags.DEFINE_integer("seeds", None, "Seeds per arm (default: 3, quick: 2).")
flags.DEFINE_integer("workers", 2, "Runs trained at once (each on 1 thread when > 1).")
flags.DEFINE_enum("budget", None, ["full", "quick", "toy"], "Overrides --quick (toy: tests).")
FLAGS = flags.FLAGS

# one thread per run when several run at once: 2 single-threaded runs beat one on 2 threads
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _env(out: str, workers: int) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
           "JAX_COMPILATION_CACHE_DIR": os.path.join(out, "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    if workers > 1 and "multi_thread_eigen" not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SINGLE_THREAD).strip()
    return env


def prerender_all(out: str, runs, workers: int) -> None:
    """Every SynthBirds split the runs read, rendered once into OUT/data (in parallel)."""
    from concurrent.futures import ProcessPoolExecutor

    from deep_image.data import sources, synthetic
    from deep_image.study.runs import EVALUATIONS, data_dir
    todo = {}
    for run in runs:
        d = run.config(out).data
        spec = sources.synthetic_spec(d)
        for split in {d.train_split, d.val_split, d.eval_split} | {
                EVALUATIONS[e][0] for e in run.evaluations}:
            todo[(spec, split)] = None
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(synthetic.prerender, *zip(*[(spec, split, data_dir(out))
                                                  for spec, split in todo])))


def run_all(out: str, runs, spec: dict, workers: int, on_done=lambda: None) -> dict[str, str]:
    """Trains every unfinished run, `workers` at a time, each after the run it fine-tunes
    from; returns {name: log path} of the runs that failed (and of those that depended on
    them)."""
    from deep_image.study.runs import result
    pending = [r for r in runs if result(out, r.name) is None]
    running, failed = {}, {}
    try:
        _schedule(out, pending, running, failed, spec, workers, on_done)
    except KeyboardInterrupt:
        # Ctrl-C reached the runs too (one process group): each saves a checkpoint and stops.
        # A signal to this process alone reaches them as SIGTERM, which does the same.
        for proc, log in running.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            log.close()
        on_done()     # the wall time up to here counts
        errors.fail("interrupted: rerun the same command to resume (finished runs are kept, "
                    "unfinished ones resume from their checkpoints)")
    return failed


def _schedule(out, pending, running, failed, spec, workers, on_done) -> None:
    from deep_image.study.runs import result, run_dir
    env = _env(out, workers)
    while pending or running:
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                log.close()
                if proc.returncode or result(out, name) is None:
                    failed[name] = log.name
                print(f"{'failed' if name in failed else 'done'}: {name}", flush=True)
                on_done()
        for run in list(pending):
            if run.init in failed:
                pending.remove(run)
                failed[run.name] = f"(not run: {run.init} failed)"
            elif len(running) < workers and (not run.init or result(out, run.init)):
                pending.remove(run)
                os.makedirs(run_dir(out, run.name), exist_ok=True)
                log = open(os.path.join(run_dir(out, run.name), "log.txt"), "a")
                cmd = [sys.executable, "-m", "deep_image.study.runs", out, run.name,
                       json.dumps(spec)]
                running[run.name] = (subprocess.Popen(cmd, stdout=log, stderr=log, env=env),
                                     log)
                print(f"started: {run.name}", flush=True)
        time.sleep(0.5)


def analyse(out: str, spec: dict):
    from deep_image.data import sources
    from deep_image.study import claims as claims_lib
    from deep_image.study.runs import Run, posteriors, result
    sizes = None
    if "c" in spec["claims"]:
        config = Run("sizes", f"stage=finetune,budget={spec['budget']}").config(out)
        sizes = sources.get_source(config.data, "test").object_sizes()
    results = claims_lib.Results(out, spec["seeds"], lambda n: posteriors(out, n),
                                 lambda n: result(out, n), sizes)
    return {k: claims_lib.CLAIMS[k].analyse(results) for k in spec["claims"]}


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
    from deep_image.study import report
    from deep_image.study.runs import result

    out = os.path.abspath(FLAGS.out)
    budget = FLAGS.budget or ("quick" if FLAGS.quick else "full")
    unknown = [c for c in FLAGS.claims if c not in claims_lib.CLAIMS]
    if unknown:
        errors.fail(f"--claims: no claim {', '.join(unknown)}; choose among "
                    f"{', '.join(claims_lib.CLAIMS)}")
    n = FLAGS.seeds or (3 if budget == "full" else 2)   # 3 full: ~80 min on 2 cores
    if n < 2:
        errors.fail("--seeds must be at least 2: an interval needs two seeds")
    spec = {"claims": sorted(FLAGS.claims), "seeds": list(range(n)), "budget": budget}
    runs = claims_lib.plan(spec)
    os.makedirs(out, exist_ok=True)
    clock = Clock(out)
    print(f"{len(runs)} runs, {sum(result(out, r.name) is None for r in runs)} to do",
          flush=True)
    prerender_all(out, [r for r in runs if result(out, r.name) is None], FLAGS.workers)
    failed = run_all(out, runs, spec, FLAGS.workers, clock.tick)
    timing = clock.tick()
    if failed:
        for name, log in failed.items():
            print(f"error: run {name} failed; its log: {log}", file=sys.stderr)
        errors.fail(f"{len(failed)} run(s) failed; fix the cause and rerun the same command "
                    "(finished runs are kept)")
    analyses = analyse(out, spec)
    meta = {"command": "python -m deep_image.reproduce " + " ".join(sys.argv[1:]),
            "budget": budget, "seeds": spec["seeds"], "claims": spec["claims"],
            "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
            **timing}
    path = report.write(out, claims_lib.CLAIMS, analyses, [result(out, r.name) for r in runs],
                        meta)
    for key, a in analyses.items():
        print(f"claim {key}: {a['verdict']}  ({a['effects'][0]['comparison']}: "
              f"{report._pct(a['effects'][0]['interval'])} points)")
    print(f"wrote {path} ({timing['wall_seconds'] / 60:.1f} min of wall time in all)")


if __name__ == "__main__":
    errors.run_app(main, required=["out"])
