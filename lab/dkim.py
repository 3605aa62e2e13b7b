"""A private OpenDKIM signer (Debian's ``opendkim``) for one lab, on a free loopback port.

It signs mail of one domain with a key ``opendkim-genkey`` makes in the work directory, for
clients on loopback (OpenDKIM's default internal hosts), the way a relay's signer runs in
``smtpd_milters`` or, for per-recipient copies, ``smtpplus_fanout_milters``. The public key is
not published anywhere: :meth:`OpenDkim.dns_record` is what a test's DKIM verifier looks up.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path

from lab.harness import LabError, _ensure_traversable, _prepare_dir, _tail, _write_owner, free_port

START_SECONDS = 15.0
SIGN_HEADERS = (
    "From,Sender,Reply-To,Subject,Date,Message-ID,To,Cc,MIME-Version,Content-Type,List-Id,"
    "List-Unsubscribe,List-Unsubscribe-Post"
)


class OpenDkim:
    def __init__(self, workdir: Path, domain: str, selector: str = "lab", *, bits: int = 2048) -> None:
        """*bits*: the RSA key size (lab.harness.DnsServer publishes a key of any size: a text over
        255 octets goes out as several strings of one TXT record)."""
        self.workdir = Path(workdir)
        self.domain = domain
        self.selector = selector
        self.bits = bits
        self.port = free_port()
        self.config_file = self.workdir / "opendkim.conf"
        self.log_file = self.workdir / "opendkim.log"
        self.key_file = self.workdir / f"{selector}.private"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def milter(self) -> str:
        """How Postfix names it in a milter list."""
        return f"inet:127.0.0.1:{self.port}"

    def dns_record(self) -> bytes:
        """The TXT record ``SELECTOR._domainkey.DOMAIN`` would hold (``v=DKIM1; k=rsa; p=...``)."""
        text = (self.workdir / f"{self.selector}.txt").read_text(encoding="ascii")
        quoted = "".join(part.split('"')[1] for part in text.split("\n") if '"' in part)
        return quoted.encode("ascii")

    def txt_record(self) -> tuple[str, str]:
        """(name, text) of the key's TXT record, for :class:`lab.harness.DnsServer`."""
        return f"{self.selector}._domainkey.{self.domain}", self.dns_record().decode("ascii")

    def start(self) -> OpenDkim:
        _prepare_dir(self.workdir)
        _ensure_traversable(self.workdir)
        made = subprocess.run(
            ["opendkim-genkey", "-b", str(self.bits), "-d", self.domain, "-s", self.selector, "-D", str(self.workdir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if made.returncode != 0:
            raise LabError(f"opendkim-genkey failed: {made.stderr.strip()}")
        user = pwd.getpwnam("opendkim")
        os.chown(self.key_file, user.pw_uid, user.pw_gid)
        self.key_file.chmod(0o600)
        self.config_file.write_text(
            "# Written by lab.dkim: a private signer for one lab.\n"
            "Syslog no\nLogWhy yes\nMode s\nBackground false\n"
            f"Domain {self.domain}\nSelector {self.selector}\nKeyFile {self.key_file}\n"
            f"Socket inet:{self.port}@127.0.0.1\nPidFile {self.workdir / 'opendkim.pid'}\n"
            "UserID opendkim\nCanonicalization relaxed/simple\nRequireSafeKeys false\n"
            "SignatureAlgorithm rsa-sha256\n"
            # As docs/unsubscribe.md tells operators: sign (and oversign) the unsubscribe headers.
            f"SignHeaders {SIGN_HEADERS}\nOversignHeaders From,List-Unsubscribe,List-Unsubscribe-Post\n",
            encoding="utf-8",
        )
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                ["opendkim", "-f", "-x", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _write_owner(self.workdir, "opendkim", pgid=self._process.pid)
        deadline = time.monotonic() + START_SECONDS
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LabError(f"opendkim did not start on {self.milter}:\n{_tail(self.log_file)}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        (self.workdir / "lab-owner.json").unlink(missing_ok=True)

    def __enter__(self) -> OpenDkim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
