#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real: promtool and the
# Prometheus server (package prometheus), and the NATS server with JetStream
# (package nats-server). Does nothing when they are present.
#
# The tests start their own Prometheus on a free port; the package's service
# must not start (or stay enabled) on a host with systemd, so the install runs
# under a policy-rc.d that forbids starting services (Debian's mechanism for
# exactly this), and the unit is disabled afterwards where systemd runs.
set -euo pipefail
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "the tests need: ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
placed_policy=no
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# placed by audit-forwarder scripts/install-test-tools.sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  placed_policy=yes
fi
cleanup() { [ "$placed_policy" = yes ] && rm -f "$policy"; return 0; }
trap cleanup EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ -d /run/systemd/system ]; then
  for unit in prometheus nats-server; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  done
fi
