#!/usr/bin/env bash
# Installs what echopanel needs on a fresh Debian machine: system packages (only the missing
# ones) and the package itself with its dev extras. Idempotent; safe to run as root in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in libportaudio2 libsndfile1 pulseaudio pulseaudio-utils espeak-ng sox openssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# the load-balancer end-to-end test (tests/e2e/test_haproxy.py)
dpkg -s haproxy >/dev/null 2>&1 || need+=(haproxy)
# the browser tests (tests/browser): Playwright drives Debian's chromium, never downloads one
dpkg -s chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
# pip only downloads what is missing or outdated; an up-to-date machine takes seconds
echo "setup: pip install -e '.[dev]'"
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
