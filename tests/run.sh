#!/usr/bin/env bash
# The whole test suite: unit, milter (TestCtx) and end-to-end through real Postfix + Dovecot.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/deploy/bootstrap.sh"
cd "$repo"
.venv/bin/python -m ruff check .
.venv/bin/python -m mypy smtpplus_milter lab
# --durations: the slowest tests in every log, to keep the suite within its time budget.
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=30 "$@"
