#!/usr/bin/env bash
# Install smtpplus-milter on a Debian 12 Postfix host: the steps of deploy/README-install.md.
#
#   deploy/install.sh [--prefix DIR] [--bin-dir DIR] [--no-user] [SETUP OPTIONS...]
#
# This script owns what needs no Python of ours: the service user (guide step 2) and the venv
# with the program (step 3). Everything else (config, Dovecot, socket directory, systemd unit,
# main.cf, master.cf, lookup tables) is `smtpplus-milter setup`, which it runs last with the
# remaining options (see `smtpplus-milter setup --help`: --postfix-dir, --dovecot-dir, --etc,
# --tls-cert, --tls-key, --force, --dry-run, ...). Safe to run again: what is already in place is
# reported as "unchanged". Starts and reloads nothing; the last line says what to run.
# The optional daemons' units (smtpplus-follow, -ingest, -fanout, -web, -preempt) are not installed
# here: each has its own section in deploy/README-install.md, to follow when its feature is used.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

prefix=/opt/smtpplus-milter
bin_dir=/usr/local/bin
user=yes
dry_run=no
setup_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
    --no-user) user=no; setup_args+=("$1"); shift ;;
    --dry-run) dry_run=yes; setup_args+=("$1"); shift ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) setup_args+=("$1"); shift ;;
  esac
done

if [ "$(id -u)" != 0 ]; then
  echo "install: run as root" >&2
  exit 1
fi

# Step 2: the service user. Not in group postfix: the socket directory gives Postfix access.
if [ "$user" = yes ]; then
  if id smtpplus >/dev/null 2>&1; then
    echo "unchanged: user smtpplus"
  elif [ "$dry_run" = yes ]; then
    echo "would change: useradd smtpplus"
  else
    useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin smtpplus
    echo "changed: created user smtpplus"
  fi
fi

# Step 3: the venv. Debian's /usr/bin/python3 by its full path: a venv built from a Python under
# root's home (pyenv) cannot be executed by user smtpplus.
if [ "$dry_run" = yes ] && [ ! -x "$prefix/bin/smtpplus-milter" ]; then
  echo "would change: python venv $prefix with $src installed; link $bin_dir/smtpplus-milter"
  echo "dry run: the rest needs the venv; run without --dry-run, or install the venv first" >&2
  exit 0
fi
if [ "$dry_run" = no ]; then
  if [ -x "$prefix/bin/python" ]; then
    echo "unchanged: venv $prefix"
  else
    /usr/bin/python3 -m venv "$prefix"
    echo "changed: created venv $prefix"
  fi
  # pip decides itself whether anything changed; its output is kept short.
  "$prefix/bin/pip" install -q "$src"
  echo "changed: installed $src into $prefix (pip)"
  if [ "$(readlink "$bin_dir/smtpplus-milter" 2>/dev/null)" = "$prefix/bin/smtpplus-milter" ]; then
    echo "unchanged: $bin_dir/smtpplus-milter"
  else
    ln -sf "$prefix/bin/smtpplus-milter" "$bin_dir/smtpplus-milter"
    echo "changed: linked $bin_dir/smtpplus-milter"
  fi
fi

exec "$prefix/bin/smtpplus-milter" setup --source "$src" "${setup_args[@]}"
