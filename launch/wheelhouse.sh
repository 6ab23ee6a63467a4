#!/usr/bin/env bash
# Every wheel deep_image needs, for one Python version and platform, in one folder: carry it to
# an air-gapped cluster and install there with the index off.
#
#   launch/wheelhouse.sh FOLDER [PYTHON_VERSION] [PLATFORM] [EXTRAS]
#   launch/wheelhouse.sh wheels                          # this machine's Python and platform
#   launch/wheelhouse.sh wheels 3.12 manylinux_2_28_x86_64 cuda   # a GPU node's (see below)
#
# then, on the cluster:
#   pip install --no-index --find-links=FOLDER -e .              (from the repository)
#
# EXTRAS: "test" adds pytest and the CPU torch of the weight-import test; "cuda" adds
# jax[cuda12] (the CUDA plugin wheels). Wheels only: nothing is built on the cluster.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 FOLDER [PYTHON_VERSION] [PLATFORM] [EXTRAS]" >&2
  exit 2
fi
folder=$1
here_version=$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
version=${2:-$here_version}
platform=${3:-}
extras=${4:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$folder"

# The project's requirements as setup.py pins them (plus the extras asked for).
reqs=$(cd "$repo" && python - "$extras" <<'EOF'
import ast, sys
tree = ast.parse(open("setup.py").read())
values = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign)
          for t in n.targets if isinstance(t, ast.Name)}
reqs = list(ast.literal_eval(values["INSTALL_REQUIRES"]))
for extra in filter(None, sys.argv[1].split(",")):
    if extra == "cuda":
        reqs.append("jax[cuda12]")
    else:
        setup_call = next(n.value for n in tree.body if isinstance(n, ast.Expr))
        kw = {k.arg: k.value for k in setup_call.keywords}
        reqs += ast.literal_eval(kw["extras_require"])[extra]
print("\n".join(reqs))
EOF
)
printf '%s\n' "$reqs" > "$folder/requirements.txt"
# Everything for this machine as wheels: downloaded ones kept, source-only packages (pure
# Python, e.g. promise) built here. Their wheels are platform-independent.
python -m pip wheel --wheel-dir "$folder" -r "$folder/requirements.txt" setuptools wheel
if [ -n "$platform" ] || [ "$version" != "$here_version" ]; then
  # another Python or platform: its binary wheels too (the pure ones built above serve it)
  args=(--only-binary=:all: --dest "$folder" --find-links "$folder" --python-version "$version")
  [ -n "$platform" ] && args+=(--platform "$platform")
  python -m pip download "${args[@]}" -r "$folder/requirements.txt" setuptools wheel
fi
echo "wrote $(ls "$folder"/*.whl | wc -l) wheels to $folder; install with:"
echo "  pip install --no-index --find-links=$folder -e $repo"
