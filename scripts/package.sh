#!/usr/bin/env bash
# Build what executors need: the cfspark package as one zip for spark-submit --py-files.
#
#   scripts/package.sh [OUT_DIR]      (default: dist/; prints the zip's path)
#
# The zip holds cfspark/ only: its modules and its default.toml (no tests, no jobs, no
# caches); executors put it on their sys.path. Its dependencies (numpy, pandas, pyarrow)
# come from the executors' Python: PYSPARK_PYTHON, or a packed venv shipped with
# --archives (see docs/operations.md, Running on a cluster).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)"
python="${CFSPARK_PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python=python3

"$python" - "$repo" "$out" <<'EOF'
import os, re, sys, zipfile

repo, out = sys.argv[1:]
version = re.search(r'^version = "([^"]+)"', open(os.path.join(repo, "pyproject.toml")).read(), re.M).group(1)
target = os.path.join(out, f"cfspark-{version}.zip")
tmp = target + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for root, dirs, files in os.walk(os.path.join(repo, "cfspark")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".toml")):
                path = os.path.join(root, name)
                z.write(path, os.path.relpath(path, repo))
os.replace(tmp, target)
print(target)
EOF
