#!/usr/bin/env bash
# A/B of JAX_DISABLE_MOST_OPTIMIZATIONS (tests/conftest.py sets it) on three of the suite's
# slow tests, one at a time, each with a fresh compilation cache; run from the repository root
# with nothing else running. Prints "flag rc seconds test" per run to docs/test_speed/ab.txt.
set -u
out=docs/test_speed/ab.txt
: > "$out"
TESTS=(
 "tests/test_parallel.py::test_same_loss_and_parameters_as_one_device[data]"
 "tests/test_experiments.py::test_config_trains_and_evaluates[cub_resnet50_448]"
 "tests/test_device_data.py::test_a_run_with_the_device_cache_resumes_on_another_device_count"
)
for t in "${TESTS[@]}"; do
  for flag in 0 1; do
    cache=$(mktemp -d)
    start=$(date +%s.%N)
    JAX_COMPILATION_CACHE_DIR=$cache JAX_DISABLE_MOST_OPTIMIZATIONS=$flag \
      python -m pytest -q -n 0 "$t" > /dev/null 2>&1
    rc=$?
    end=$(date +%s.%N)
    echo "$flag $rc $(python -c "print(round($end - $start, 1))") $t" | tee -a "$out"
    rm -rf "$cache"
  done
done
