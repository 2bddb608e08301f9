#!/usr/bin/env bash
# `make compose-test`: docker-compose.yml run for real on this machine. Sets up the engine and
# the base image when missing (scripts/container-engine.sh), builds the images (layers cached
# between runs), then runs tests/deploy/stack against the running stack. Whatever the run
# started is removed at the end, also when a step fails or the run is interrupted; a run that
# passed must have left nothing behind. Prints how long each phase took.
# Knobs (environment): VENV (.venv), PYTEST_ARGS, VERDICT_STACK_LOCUST_RUN_TIME (30s).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
mkdir -p var/compose-test
durations=var/compose-test/durations.txt
: >"$durations"

phase() {  # phase NAME SECONDS: print and keep one line per phase
  printf 'compose-test: %-6s %4d s\n' "$1" "$2" | tee -a "$durations"
}
cleanup() {
  rc=$?
  "$PY" -m tests.deploy.stack.harness down || true
  echo "compose-test: exit code $rc; durations in $durations"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t0=$(date +%s)
bash scripts/container-engine.sh
t1=$(date +%s); phase setup $((t1 - t0))
"$PY" -m tests.deploy.stack.harness build
t2=$(date +%s); phase build $((t2 - t1))
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of flags
VERDICT_STACK=1 "$PY" -m pytest tests/deploy/stack --durations=0 ${PYTEST_ARGS:-}
t3=$(date +%s); phase test $((t3 - t2))
"$PY" -m tests.deploy.stack.harness down --expect-clean
phase total $(($(date +%s) - t0))
