#!/usr/bin/env bash
# `make run`: start the debug receiver on 127.0.0.1:9000 and the daemon with
# config.example.yaml, send the demo events once the daemon is ready, and keep
# both running (deliveries print below) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

"$BIN/audit-forwarder" receiver --host 127.0.0.1 --port 9000 &
receiver=$!
"$BIN/audit-forwarder" run --config config.example.yaml &
daemon=$!
stop_all() {
  kill -TERM "$daemon" "$receiver" 2>/dev/null || true
  wait "$daemon" "$receiver" 2>/dev/null || true
}
trap stop_all EXIT

"$BIN/python" - <<'PY'
import sys, time, urllib.request, urllib.error

deadline = time.monotonic() + 30
while True:
    try:
        with urllib.request.urlopen("http://127.0.0.1:9464/readyz", timeout=1) as answer:
            if answer.status == 200:
                break
    except (urllib.error.URLError, OSError):
        pass
    if time.monotonic() > deadline:
        sys.exit("the daemon did not become ready within 30 s")
    time.sleep(0.2)

with open("examples/demo-events.ndjson", "rb") as events:
    request = urllib.request.Request(
        "http://127.0.0.1:8686/v1/events",
        data=events.read(),
        headers={"Content-Type": "application/x-ndjson"},
    )
with urllib.request.urlopen(request, timeout=10) as answer:
    print(f"\n>>> sent examples/demo-events.ndjson: {answer.status} {answer.read().decode()}\n", flush=True)
print(">>> send more with: curl -H 'Content-Type: application/json' "
      "-d '{\"event_type\": \"key.created\"}' http://127.0.0.1:8686/v1/events   (Ctrl-C stops)\n",
      flush=True)
PY
wait "$daemon"
