#!/usr/bin/env bash
# The GPU check as the device machine runs it: that machine has torch, lightning, torchmetrics and
# rich but no package index, so the wheels made here by `bash ../shared/device/wheels.sh` travel
# along in .whl/ (the `carry` of the call) and install into /tmp/site first.
#   bash scripts/gpu_check.sh "$OUT" [gpu_check.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_check_out}}
shift || true
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
exec python3 scripts/gpu_check.py --out "$out" "$@"
