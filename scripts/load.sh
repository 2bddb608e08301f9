#!/usr/bin/env bash
# Bounded headless load run: start verdict on free 127.0.0.1 ports (HTTP and gRPC), wait until
# ready, run Locust (REST and gRPC users) with the SLO gate, write an HTML report, stop the
# server. Exit code = Locust's (gate).
# Knobs (environment): VENV (.venv), USERS (10), SPAWN_RATE (5), RUN_TIME (30s),
# VERDICT_SLO_P99_MS (250), REPORT_DIR (var/reports), READY_TIMEOUT_S (60).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
USERS=${USERS:-10}
SPAWN_RATE=${SPAWN_RATE:-5}
RUN_TIME=${RUN_TIME:-30s}
REPORT_DIR=${REPORT_DIR:-var/reports}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-60}
export VERDICT_SLO_P99_MS=${VERDICT_SLO_P99_MS:-250}

SERVE="$VENV/bin/verdict-serve"
LOCUST="$VENV/bin/locust"
PY="$VENV/bin/python"
for exe in "$SERVE" "$LOCUST" "$PY"; do
  if [ ! -x "$exe" ]; then
    echo "load: $exe is missing; run 'make install-dev' (or set VENV)" >&2
    exit 2
  fi
done

mkdir -p "$REPORT_DIR"
work=$(mktemp -d "${TMPDIR:-/tmp}/verdict-load.XXXXXX")
# Both ports from one process, each socket still bound while the other is taken: two ports
# picked one after the other could be the same one, and the server would not start.
read -r PORT GRPC_PORT < <("$PY" -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0))
b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])
a.close()
b.close()')
URL="http://127.0.0.1:$PORT"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
REPORT="$REPORT_DIR/load-$stamp.html"

# A throwaway feedback store and id key: the load run never touches var/feedback.sqlite3.
VERDICT_HOST=127.0.0.1 VERDICT_PORT=$PORT VERDICT_GRPC_PORT=$GRPC_PORT \
VERDICT_FEEDBACK_URL="sqlite:///$work/feedback.sqlite3" \
VERDICT_PREDICTION_ID_KEY=${VERDICT_PREDICTION_ID_KEY:-load-test-key-$stamp} \
  "$SERVE" --host 127.0.0.1 --port "$PORT" >"$work/server.log" 2>&1 &
server=$!

stop_server() {
  if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop_server EXIT

echo "load: verdict pid $server on $URL and gRPC port $GRPC_PORT"
if ! "$PY" - "$URL/v2/health/ready" "$READY_TIMEOUT_S" "$server" <<'PYEOF'
import os, sys, time, urllib.request
url, limit, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("load: the server exited before it was ready")
    try:
        if urllib.request.urlopen(url, timeout=1).status == 200:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(f"load: {url} not ready after {limit:.0f} s")
PYEOF
then
  echo "--- server log" >&2; cat "$work/server.log" >&2
  exit 1
fi

rc=0
# gRPC users import the generated stub from this checkout's service package.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
"$LOCUST" -f deploy/locust/locustfile.py --host "$URL" --grpc-target "127.0.0.1:$GRPC_PORT" --headless \
  --users "$USERS" --spawn-rate "$SPAWN_RATE" --run-time "$RUN_TIME" --stop-timeout 5 \
  --only-summary --html "$REPORT" || rc=$?
echo "load: report $REPORT (gate exit code $rc, p99 bound ${VERDICT_SLO_P99_MS} ms)"
if [ "$rc" -ne 0 ]; then
  echo "--- server log (tail)" >&2; tail -n 40 "$work/server.log" >&2
fi
exit "$rc"
