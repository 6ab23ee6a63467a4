"""XLA compile time of one of the suite's programs under two XLA_FLAGS settings, read off
JAX's own monitoring events (backend compile, tracing, lowering), no compilation cache, one
run after the other. Run from the repository root with nothing else running:

    python docs/test_speed/compile_time.py [> docs/test_speed/compile_time.txt]

The program: one 8-device equivalence run of tests/test_parallel.py (its slowest VGG mode).
Each setting runs in a fresh subprocess (XLA reads XLA_FLAGS once, when the backend starts).
"""

import json
import os
import subprocess
import sys

PROGRAM = ["tests/butterfly_equivalence.py", "data", "8", "1", "--bf16", "--accumulate=2"]
# named both ways: the program imports tests/conftest.py, which adds the suite's flag unless
# XLA_FLAGS names it
SETTINGS = {"XLA's fusion emitters (a user's run: =true)": "--xla_cpu_use_fusion_emitters=true",
            "the suite's (--xla_cpu_use_fusion_emitters=false)":
                "--xla_cpu_use_fusion_emitters=false"}
# in the child: a listener on JAX's duration events, then the program itself
CHILD = """
import collections, json, runpy, sys, time
from jax import monitoring
total, count = collections.Counter(), collections.Counter()
def listen(event, duration, **kwargs):
    total[event] += duration
    count[event] += 1
monitoring.register_event_duration_secs_listener(listen)
start = time.time()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("COMPILE_TIME " + json.dumps({"wall": time.time() - start, "total": total,
                                   "count": count}))
"""
EVENTS = {"backend compile": "/jax/core/compile/backend_compile_duration",
          "tracing": "/jax/core/compile/jaxpr_trace_duration",
          "lowering": "/jax/core/compile/jaxpr_to_mlir_module_duration"}


def measure(flags: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
           "JAX_ENABLE_COMPILATION_CACHE": "false",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count=8 {flags}".strip()}
    proc = subprocess.run([sys.executable, "-c", CHILD, *PROGRAM], capture_output=True,
                          text=True, env=env, check=True)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("COMPILE_TIME "))
    return json.loads(line.split(" ", 1)[1])


def main():
    print(f"program: python {' '.join(PROGRAM)} (JAX_DISABLE_MOST_OPTIMIZATIONS=1, no cache)")
    print(f"{'setting':52s} {'wall s':>7s} " + " ".join(f"{k:>16s}" for k in EVENTS))
    for name, flags in SETTINGS.items():
        r = measure(flags)
        cells = [f"{r['total'].get(e, 0.0):8.2f} s ({r['count'].get(e, 0):2d}x)"
                 for e in EVENTS.values()]
        print(f"{name:52s} {r['wall']:7.1f} " + " ".join(f"{c:>16s}" for c in cells))


if __name__ == "__main__":
    main()
