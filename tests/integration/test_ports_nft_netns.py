"""deploy/nftables/smtpplus-ports.nft loaded for real, in a private network namespace (nothing on
this host's own firewall changes): the service user's connection to a port of 1025-5000 on this
host reaches the submission port, another user's does not, and an excluded port is left alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs inside the namespace: a listener on 587 (root may bind it), the table loaded, then one
# connection to 127.0.0.1:PORT as the given user; prints "open" or "closed".
_PROBE = """
import socket, subprocess, sys
rules, port, user = sys.argv[1], sys.argv[2], sys.argv[3]
server = socket.socket()
server.bind(("127.0.0.1", 587))
server.listen()
subprocess.run(["nft", "-f", rules], check=True)
connect = (
    "import socket\\ntry:\\n socket.create_connection(('127.0.0.1', %s), timeout=2)\\n print('open')\\n"
    "except OSError:\\n print('closed')" % port
)
prefix = [] if user == "root" else ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
print(subprocess.run([*prefix, sys.executable, "-c", connect], capture_output=True, text=True).stdout.strip())
"""

_NEEDS = ("unshare", "nft", "setpriv", "ip")


@pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(tool) is None for tool in _NEEDS),
    reason="needs root and unshare, nft, setpriv, ip (deploy/bootstrap.sh installs nftables)",
)
@pytest.mark.parametrize(
    ("port", "user", "excluded", "expected"),
    [
        pytest.param(2525, "service", "", "open", id="service-user-redirected"),
        pytest.param(1025, "service", "", "open", id="range-start"),
        pytest.param(5000, "service", "", "open", id="range-end"),
        pytest.param(5001, "service", "", "closed", id="above-range"),
        pytest.param(1024, "service", "", "closed", id="below-range"),
        pytest.param(2525, "root", "", "closed", id="other-user-untouched"),
        pytest.param(2525, "service", "elements = { 2525 }", "closed", id="excluded-port"),
    ],
)
def test_the_redirect_in_a_private_namespace(
    tmp_path: Path, port: int, user: str, excluded: str, expected: str
) -> None:
    # "nobody" stands in for the service user, who may not exist on this machine.
    text = (REPO / "deploy/nftables/smtpplus-ports.nft").read_text(encoding="utf-8").replace('"smtpplus"', '"nobody"')
    text = text.replace("        flags interval\n", f"        flags interval\n        {excluded}\n")
    (tmp_path / "rules.nft").write_text(text, encoding="utf-8")
    (tmp_path / "probe.py").write_text(_PROBE, encoding="utf-8")
    script = (
        f'ip link set lo up && "{sys.executable}" "{tmp_path / "probe.py"}" "{tmp_path / "rules.nft"}" {port} {user}'
    )
    done = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
