#!/usr/bin/env bash
# Install everything, then run the whole test suite. Fails when pytest fails or
# collects no test at all (pytest exit 5).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pytest -q "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "[test] pytest collected no tests: failing" >&2
fi
exit "$status"
