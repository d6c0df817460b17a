#!/usr/bin/env bash
# The README's run command: installs what is missing, then a live session end to end
# (embedded server + bundled Whisper tiny.en + a bundled recording through the full client path).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m echopanel demo "$@"
