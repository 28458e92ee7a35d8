#!/usr/bin/env bash
# Installs the Debian packages the benchmark drives (`make bench`): nginx (the
# loopback sink), wrk (the single-event load generator), syslog-ng with its
# http() destination (the peer the figures are compared to) and nats-server
# (the JetStream scenario). Does nothing when
# they are present. Without root or apt-get it only says what is missing: the
# benchmark still runs, falling back to an aiohttp sink and client, and without
# the syslog-ng ratios, and says so in its output.
set -euo pipefail
missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have nginx || missing+=(nginx)
have wrk || missing+=(wrk)
have syslog-ng || missing+=(syslog-ng-core)
have nats-server || missing+=(nats-server)
# The http() destination is a separate module package.
if ! ls /usr/lib/syslog-ng/*/libhttp.so >/dev/null 2>&1 \
  && ! ls /usr/lib/*/syslog-ng/libhttp.so >/dev/null 2>&1 \
  && ! ls /usr/lib/syslog-ng/libhttp.so >/dev/null 2>&1; then
  missing+=(syslog-ng-mod-http)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "the benchmark would use: ${missing[*]} (Debian: apt-get install ${missing[*]});" \
    "running without them" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d refuses service starts: the packages' post-install scripts must
# not start a system nginx or syslog-ng; the benchmark runs its own instances.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  trap 'rm -f "$policy"' EXIT
fi
# A package that cannot be installed must not stop the benchmark: it runs
# without that tool and says so.
apt-get update -qq || echo "apt-get update failed; trying the install anyway" >&2
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  for package in "${missing[@]}"; do
    apt-get install -y -qq --no-install-recommends "$package" >/dev/null \
      || echo "could not install $package; the benchmark runs without it" >&2
  done
fi
exit 0
