# The pilot's run helper, sourced by roundN/run.sh (needs $work and $out set; run from the
# repository root):
#   run NAME CONFIG_ARG [OVERRIDES...]
# trains experiments/claims.py:CONFIG_ARG into $work/NAME (log: $work/NAME.log), appends one
# line to $out/summary.jsonl (name, overrides, seconds, final val top-1, the validation curve)
# and prints it; a run whose $work/NAME/DONE exists is not run again.
run() {
  local name=$1 arg=$2; shift 2
  if [ -f "$work/$name/DONE" ]; then return; fi
  local t0=$SECONDS
  python -m deep_image.train --config="experiments/claims.py:$arg" --workdir="$work/$name" "$@" \
    > "$work/$name.log" 2>&1
  python - "$work/$name" "$name" "$((SECONDS - t0))" "$arg" "$*" >> "$out/summary.jsonl" <<'PY'
import json, sys
from deep_image.study.runs import curve
workdir, name, seconds, arg, overrides = sys.argv[1:]
c = curve([json.loads(line) for line in open(f"{workdir}/metrics.jsonl")])
print(json.dumps({"name": name, "arg": arg, "overrides": overrides, "seconds": int(seconds),
                  "val_top1": c["val_top1"][-1], "curve": c}))
PY
  touch "$work/$name/DONE"
  tail -1 "$out/summary.jsonl"
}
