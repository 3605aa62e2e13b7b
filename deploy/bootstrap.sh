#!/usr/bin/env bash
# Install what the lab, the tests and the benchmarks need on Debian 12 (run as root), then
# create .venv with the package installed. Idempotent; sourced by deploy/lab.sh and tests/run.sh.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# dnsmasq-base: the dnsmasq binary only (no service), for the private DNS server of the verify tests.
# nftables: only `nft -c` (syntax check, nothing loaded) of the shipped firewall snippet.
# postgresql: only its binaries (initdb, pg_ctl), for the private server of the tracking store tests.
# opendkim: only its binaries, for the private DKIM signer of the lab (copies signed after the split).
# chromium, chromium-driver: a headless browser the tests drive through the unsubscribe page.
# redis-server: only its binary, for the private Redis of the shared sending-limit tests.
packages=(postfix dovecot-core libmilter-dev gcc python3-dev python3-venv openssl procps ca-certificates
          prometheus-alertmanager prometheus dnsmasq-base nftables postgresql opendkim opendkim-tools
          chromium chromium-driver redis-server)

if [ "$(id -u)" != 0 ]; then
  echo "bootstrap: run as root (it installs Debian packages and starts private Postfix/Dovecot instances)" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${CI:-}" = true ] || [ ${#missing[@]} -gt 0 ]; then
  # "No configuration": the package installs no main.cf and starts no default instance. The lab
  # and the tests run private instances of their own and never touch the default one.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  echo "bootstrap: apt-get install ${packages[*]}"
  apt-get update -qq
  # The lab and the tests only use these programs' binaries in private instances: keep the
  # packages from starting system-wide daemons (dovecot, prometheus, alertmanager) on install.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    guard=/usr/sbin/policy-rc.d
  fi
  trap '[ -n "$guard" ] && rm -f "$guard"' EXIT
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  [ -n "$guard" ] && rm -f "$guard"
  guard=""
fi

py=${PYTHON:-python3}
if [ ! -x "$repo/.venv/bin/python" ]; then
  "$py" -m venv "$repo/.venv"
fi
"$repo/.venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$repo/.venv/bin/python" -m pip install -q -e "$repo[test]"
echo "bootstrap: ready ($("$repo/.venv/bin/python" --version), $(postconf -d mail_version 2>/dev/null), dovecot $(dovecot --version 2>/dev/null | cut -d' ' -f1))"
