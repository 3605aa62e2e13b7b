#!/usr/bin/env bash
# The SMTP+ lab: a real Postfix + Dovecot SASL + smtpplus-milter on loopback with sample users.
# Sends sample messages, prints what happened, and (with --keep) stays up for your own tests.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/deploy/bootstrap.sh"
cd "$repo"  # the lab is a folder of the repository, not part of the installed package
exec "$repo/.venv/bin/python" -m lab "$@"
