#!/usr/bin/env bash
# Instructions one request costs, free of the host's noise (docs/benchmarks.md):
#   bash bench/callgrind.sh CHECKOUT VIA [bench.asgi_path options]
#   bash bench/callgrind.sh . server --rows 64 --protocol v2-binary
#   bash bench/callgrind.sh /tmp/before protocol --rows 1     # a checkout from before issue 16
# Runs the checkout's bench.asgi_path under callgrind for 100 and for 500 requests and
# prints (instructions of the long run - those of the short one) / 400. Needs valgrind.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
checkout=$(cd "$1" && pwd); via=$2; shift 2
python=${PYTHON:-$here/.venv/bin/python}
total() {
  local out; out=$(mktemp)
  (cd "$checkout" && PYTHONPATH=$checkout valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$python" "$here/bench/frozen_path.py" --via "$via" --requests "$1" "${@:2}" 2>&1) \
    | awk '/Collected/ {gsub(",", "", $4); print $4}'
  rm -f "$out"
}
short=$(total 100 "$@")
long=$(total 500 "$@")
echo "$checkout --via $via $*: $(( (long - short) / 400 )) instructions/request"
