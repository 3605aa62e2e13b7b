"""What the shipped configuration exposes: sockets, the loopback listener, NUL, unit bounds."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from smtpplus_milter.admin.postfix import generate
from smtpplus_milter.cli import main
from smtpplus_milter.config import ConfigError, load_config
from tests.support.builders import config_with, write_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("socket", ["inet:8891", "inet6:8891"])
def test_inet_socket_without_host_is_refused(tmp_path: Path, socket: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, settings={"milter": {"socket": socket}})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.path == ("milter", "socket") and "every interface" in problem.message
    assert f"{socket}@127.0.0.1" in problem.message
    assert main(["check-config", "-c", str(path)]) == 1
    assert "milter.socket" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("socket", "warned"),
    [
        pytest.param("inet:8891@127.0.0.1", False, id="loopback"),
        pytest.param("inet:8891@localhost", False, id="localhost"),
        pytest.param("inet6:8891@[::1]", False, id="v6-loopback"),
        pytest.param("inet:8891@0.0.0.0", True, id="any"),
        pytest.param("inet:8891@192.0.2.7", True, id="lan"),
        pytest.param("inet:8891@milter.example", True, id="name"),
    ],
)
def test_non_loopback_milter_socket_is_warned_about(
    tmp_path: Path, socket: str, warned: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, settings={"milter": {"socket": socket}})
    assert main(["check-config", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert ("WARNING: milter.socket" in err) is warned
    assert bool(load_config(path).warnings) is warned


@pytest.mark.parametrize("name", ["", "has space", "a" * 101, "-o"])
def test_bad_submission_daemon_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(tmp_path, settings={"submission_daemon_names": [name]})
    assert caught.value.problems[0].path[0] == "submission_daemon_names"


def test_postfix_config_strips_nul(tmp_path: Path) -> None:
    snippets = generate(config_with(tmp_path).postfix)
    assert snippets.main_cf["message_strip_characters"] == "\\0"
    shipped = (REPO / "deploy/postfix/main.cf.snippet").read_text(encoding="utf-8")
    assert re.search(r"^message_strip_characters = \\0$", shipped, re.MULTILINE)


def test_local_listener_is_no_open_relay(tmp_path: Path) -> None:
    settings = {
        "alerts": {"email": {"to": ["it@example.com"], "smtp": "127.0.0.1:10025", "from": "Alerts@Relay.example"}},
        "verification": {"smtp": "127.0.0.1:10025", "from": "verify@relay.example"},
    }
    snippets = generate(config_with(tmp_path, settings=settings).postfix)
    lines = snippets.local_listener.splitlines()
    assert lines[0].split()[:2] == ["127.0.0.1:10025", "inet"]  # one service for both senders
    options = dict(line.strip()[3:].split("=", 1) for line in lines[1:])
    assert options["smtpd_milters"] == ""
    assert options["smtpd_sasl_auth_enable"] == "no"
    assert options["mynetworks"] == "127.0.0.1/32"
    assert options["smtpd_relay_restrictions"] == "permit_mynetworks,reject"
    assert options["smtpd_client_restrictions"] == "permit_mynetworks,reject"
    assert options["smtpd_sender_restrictions"] == "$smtpplus_local_sender_restrictions"
    restriction = snippets.local_listener_main_cf["smtpplus_local_sender_restrictions"]
    assert restriction == "check_sender_access inline:{ alerts@relay.example=OK, verify@relay.example=OK }, reject"


def test_no_local_listener_for_a_remote_smtp(tmp_path: Path) -> None:
    settings = {"verification": {"smtp": "smarthost.example:25", "from": "verify@relay.example"}}
    snippets = generate(config_with(tmp_path, settings=settings).postfix)
    assert snippets.local_listener == "" and snippets.local_listener_main_cf == {}
    assert any("smarthost.example:25 is not on this host" in warning for warning in snippets.warnings)


def test_unit_bounds_memory_and_tasks() -> None:
    unit = (REPO / "systemd/smtpplus-milter.service").read_text(encoding="utf-8")
    memory = re.search(r"^MemoryMax=(\d+)G$", unit, re.MULTILINE)
    tasks = re.search(r"^TasksMax=(\d+)$", unit, re.MULTILINE)
    assert memory and 1 <= int(memory.group(1)) <= 4
    assert tasks and 128 <= int(tasks.group(1)) <= 2048


@pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed (deploy/bootstrap.sh installs it)")
@pytest.mark.parametrize("name", ["smtpplus-local.nft", "smtpplus-ports.nft"])
def test_nftables_snippet_parses(tmp_path: Path, name: str) -> None:
    # `nft -c` checks without loading anything; the service user may not exist here.
    text = (REPO / "deploy/nftables" / name).read_text(encoding="utf-8").replace('"smtpplus"', '"nobody"')
    (tmp_path / "rules.nft").write_text(text, encoding="utf-8")
    done = subprocess.run(["nft", "-c", "-f", str(tmp_path / "rules.nft")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed (deploy/bootstrap.sh installs it)")
def test_the_ports_snippet_takes_the_excluded_ports_the_guide_shows(tmp_path: Path) -> None:
    # The guide tells the operator to fill the set: what it shows must load.
    text = (REPO / "deploy/nftables/smtpplus-ports.nft").read_text(encoding="utf-8").replace('"smtpplus"', '"nobody"')
    assert "    #     elements = { 3306, 4190 }\n" in text
    text = text.replace(
        "        flags interval\n", "        flags interval\n        elements = { 3306, 4190, 2000-2100 }\n"
    )
    (tmp_path / "rules.nft").write_text(text, encoding="utf-8")
    done = subprocess.run(["nft", "-c", "-f", str(tmp_path / "rules.nft")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_the_ports_snippet_redirects_1025_to_5000_to_submission_except_the_excluded() -> None:
    text = (REPO / "deploy/nftables/smtpplus-ports.nft").read_text(encoding="utf-8")
    rules = [line.strip() for line in text.splitlines() if "redirect" in line and not line.lstrip().startswith("#")]
    assert len(rules) == 2  # from outside (prerouting) and the service user's own (output)
    for rule in rules:
        assert "fib daddr type local" in rule  # this host's addresses only, never routed traffic
        assert "tcp dport 1025-5000 tcp dport != @excluded" in rule and rule.endswith("redirect to :587")
    assert rules[1].startswith('meta skuid "smtpplus" ')  # no other local program is redirected
    # A reload replaces the table instead of doubling its rules.
    assert "table inet smtpplus_ports\ndelete table inet smtpplus_ports\n" in text


def test_no_shipped_listener_lies_in_the_redirected_ports() -> None:
    # A port of ours in 1025-5000 would be redirected to 587 for the smtpplus user (output chain):
    # the example config, the Postfix snippets and the defaults in the config code.
    shipped = "\n".join(
        (REPO / path).read_text(encoding="utf-8")
        for path in (
            "deploy/smtpplus.yaml",
            "deploy/postfix/master.cf.snippet",
            "deploy/postfix/main.cf.snippet",
            "smtpplus_milter/config/schema.py",
            "smtpplus_milter/config/values.py",
        )
    )
    ports = {int(port) for port in re.findall(r'(?:127\.0\.0\.1|localhost|\])(?::|", )(\d+)\b', shipped)}
    assert {9464, 10027, 8025} <= ports, "the pattern finds the shipped listeners"
    assert not {port for port in ports if 1025 <= port <= 5000}


def test_the_doctor_runs_daily_as_the_service_user_and_alerts() -> None:
    service, timer = _unit("smtpplus-doctor.service"), _unit("smtpplus-doctor.timer")
    assert service["Type"] == ["oneshot"] and service["User"] == ["smtpplus"]
    command = service["ExecStart"]
    assert command[1:] == ["doctor", "-c", "/etc/smtpplus/smtpplus.yaml", "--format", "json", "--alert"]
    assert service["ProtectSystem"] == ["strict"] and service["CapabilityBoundingSet"] == []
    assert not any(key in service for key in ("ReadWritePaths", "StateDirectory"))  # it only reads
    assert {"AF_INET", "AF_INET6", "AF_NETLINK"} <= set(service["RestrictAddressFamilies"])  # postconf: netlink
    assert timer["OnCalendar"] == ["daily"] and timer["Persistent"] == ["true"]
    assert timer["RandomizedDelaySec"] == ["1h"] and timer["WantedBy"] == ["timers.target"]


def _unit(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (REPO / "systemd" / name).read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "[")):
            settings.setdefault(key.strip(), []).extend(value.split())
    return settings


def _writable(unit: dict[str, list[str]], path: Path) -> bool:
    """Whether a ProtectSystem=strict unit may write *path*: under a state directory or a
    ReadWritePaths entry, and under no ReadOnlyPaths or InaccessiblePaths entry."""
    allowed = [Path("/var/lib", d) for d in unit.get("StateDirectory", [])] + [
        Path(p) for p in unit.get("ReadWritePaths", [])
    ]
    denied = [Path(p.lstrip("-")) for p in unit.get("ReadOnlyPaths", []) + unit.get("InaccessiblePaths", [])]
    return any(path.is_relative_to(a) for a in allowed) and not any(path.is_relative_to(d) for d in denied)


@pytest.mark.parametrize(
    "name",
    [
        "smtpplus-milter.service",
        "smtpplus-follow.service",
        "smtpplus-ingest.service",
        "smtpplus-fanout.service",
        "smtpplus-web.service",
    ],
)
def test_the_units_can_write_the_default_spool_and_sqlite_store(name: str) -> None:
    from smtpplus_milter.config.schema import TrackingSection

    unit = _unit(name)
    example = re.search(r"store: sqlite:///(/\S+)", (REPO / "deploy/smtpplus.yaml").read_text(encoding="utf-8"))
    assert example is not None
    spool = Path(TrackingSection.model_fields["spool_dir"].default)
    assert unit["ProtectSystem"] == ["strict"] and unit["User"] == ["smtpplus"]
    assert unit["StateDirectoryMode"] == ["0750"]  # the records are mail metadata: not for other users
    assert _writable(unit, spool), f"{name} cannot write the default tracking.spool_dir {spool}"
    assert _writable(unit, Path(example.group(1)).parent), f"{name} cannot write the SQLite store's directory"
    assert not _writable(unit, Path("/etc/smtpplus/x"))  # the check itself can say no


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(
    "name",
    sorted(path.name for pattern in ("*.service", "*.socket", "*.timer") for path in (REPO / "systemd").glob(pattern)),
)
def test_units_pass_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    # Every unit goes beside it: a .socket or .timer is checked with the .service it starts (and
    # that one may Require= its socket). verify refuses a unit whose ExecStart does not exist: the
    # program is not installed here.
    for unit in [*(REPO / "systemd").glob("*.s*"), *(REPO / "systemd").glob("*.timer")]:
        text = unit.read_text(encoding="utf-8").replace("/usr/local/bin/smtpplus-milter", "/bin/true")
        (tmp_path / unit.name).write_text(text, encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)], capture_output=True, text=True, timeout=60
    )
    # An unknown or misspelt key is only a warning ("Unknown key ..., ignoring"): no output at all.
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr + done.stdout


def test_the_policy_socket_unit_makes_the_default_policy_socket_for_postfix_only() -> None:
    from smtpplus_milter.config.values import POLICY_LISTEN

    socket, service = _unit("smtpplus-policyd.socket"), _unit("smtpplus-policyd.service")
    # The socket systemd makes must be the one the config names (and main.cf asks).
    assert socket["ListenStream"] == [str(POLICY_LISTEN.path)]
    assert socket["SocketUser"] == ["postfix"] and socket["SocketMode"] == ["0600"]
    assert socket["Accept"] == ["no"] and socket["Service"] == ["smtpplus-policyd.service"]
    assert service["User"] == ["smtpplus"] and service["CapabilityBoundingSet"] == []
    assert "policyd" in service["ExecStart"] and "smtpplus-policyd.socket" in service["Requires"]
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(service["RestrictAddressFamilies"])  # Redis over TCP
    assert int(service["TasksMax"][0]) > 1000  # one thread per connection, policy.max_connections


def test_the_preempt_unit_runs_as_root_and_may_write_the_queue_and_its_state() -> None:
    from smtpplus_milter.config.schema import PreemptSection

    unit = _unit("smtpplus-preempt.service")
    assert unit["User"] == ["root"] and unit["ProtectSystem"] == ["strict"]  # postsuper refuses other users
    assert "preempt" in unit["ExecStart"] and "--pid-file" in unit["ExecStart"]
    state = Path(PreemptSection.model_fields["state_file"].default)
    assert _writable(unit, state), "the unit cannot replace the default priority.preempt.state_file"
    assert _writable(unit, Path("/var/spool/postfix/hold/4jdxKc5QM5zJLwk")), "postsuper cannot rename queue files"
    for denied in ("/etc/smtpplus/smtpplus.yaml", "/etc/postfix/main.cf", "/var/lib/smtpplus/tracking.db"):
        assert not _writable(unit, Path(denied)), denied
    assert unit["StateDirectoryMode"] == ["0750"]
    # The capabilities themselves are checked against a real queue in tests/e2e/test_preempt_unit_e2e.py.
    assert sorted(unit["CapabilityBoundingSet"]) == ["CAP_DAC_READ_SEARCH", "CAP_SETGID", "CAP_SETUID"]
    # postsuper switches to Postfix's mail_owner: setuid and setgroups are in @privileged.
    assert not any("@privileged" in entry for entry in unit["SystemCallFilter"])
    assert unit["PrivateUsers"] == ["no"]
    assert {"AF_UNIX", "AF_NETLINK"} <= set(unit["RestrictAddressFamilies"])
    # A clean stop releases what it holds (a postsuper run); a crash is repaired by the next start.
    assert unit["KillSignal"] == ["SIGTERM"] and int(unit["TimeoutStopSec"][0]) >= 60
    assert unit["Restart"] == ["on-failure"]
    assert "postfix.service" in unit["After"]  # stopped before Postfix, so the released mail is kicked


def test_the_shipped_preempt_example_is_off_and_valid(tmp_path: Path) -> None:
    from smtpplus_milter.config.schema import PreemptSection

    shipped = (REPO / "deploy/smtpplus.yaml").read_text(encoding="utf-8")
    settings = yaml.safe_load(shipped)
    assert "preempt" not in settings["priority"]  # preemption is opt-in
    lines = shipped.splitlines()
    start = lines.index("  # preempt:")
    block = [lines[start], *itertools.takewhile(lambda line: line.startswith("  #   "), lines[start + 1 :])]
    example = yaml.safe_load("\n".join(line.replace("# ", "", 1) for line in block))["preempt"]
    assert len(example) == len(PreemptSection.model_fields)  # every key is shown
    config = config_with(tmp_path, settings={"priority": {**settings["priority"], "preempt": example}})
    assert config.preempt is not None
    assert config.preempt.pause == frozenset({"low"}) and config.preempt.resume_after_seconds == 5
    for key in ("postfix_config_dir", "state_file"):
        assert str(getattr(config.preempt, key)) == PreemptSection.model_fields[key].default, key
    # Its own metrics port: not one another daemon in the example (or its defaults) listens on.
    assert config.preempt.metrics_listen is not None
    others = {int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", shipped.replace(example["metrics_listen"], ""))}
    assert config.preempt.metrics_listen.port not in others | {9464, 9465, 8025}


def test_the_guides_preemption_section_names_real_metrics_and_the_unit() -> None:
    from smtpplus_milter.observe.metrics import PreemptMetrics

    guide = (REPO / "deploy/README-install.md").read_text(encoding="utf-8")
    section = guide.split("## Priority preemption", 1)[1].split("\n## ", 1)[0]
    assert '"$SRC/systemd/smtpplus-preempt.service"' in section
    named = set(re.findall(r"`(smtpplus_[a-z_]+)", section))
    exposed = {sample.name for family in PreemptMetrics().registry.collect() for sample in family.samples}
    assert named and named <= exposed, named - exposed


def test_the_refund_socket_unit_is_the_milters_only() -> None:
    from smtpplus_milter.config.values import POLICY_REFUND_LISTEN

    socket, service = _unit("smtpplus-policyd-refund.socket"), _unit("smtpplus-policyd.service")
    assert socket["ListenStream"] == [str(POLICY_REFUND_LISTEN.path)]
    # The milter runs as smtpplus; nobody else may take counts back.
    assert socket["SocketUser"] == ["smtpplus"] and socket["SocketMode"] == ["0600"]
    assert socket["Service"] == ["smtpplus-policyd.service"]
    assert set(service["Sockets"]) == {"smtpplus-policyd.socket", "smtpplus-policyd-refund.socket"}
    assert _unit("smtpplus-milter.service")["User"] == ["smtpplus"]
