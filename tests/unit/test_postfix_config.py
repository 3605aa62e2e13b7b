"""postfix-config: the Postfix side of priority routing, generated from the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpplus_milter.admin.postfix import generate
from smtpplus_milter.cli import main
from tests.support.builders import config_with


def test_routed_queues_and_transports(tmp_path: Path) -> None:
    snippets = generate(config_with(tmp_path).postfix, postfix_dir="/etc/postfix")
    assert snippets.main_cf["milter_header_checks"] == "regexp:/etc/postfix/smtpplus_milter_header_checks"
    assert snippets.main_cf["smtp_header_checks"] == "regexp:/etc/postfix/smtpplus_smtp_header_checks"
    assert "smtpplus-high unix" in snippets.master_cf and "smtpplus-low unix" in snippets.master_cf
    # Only the bulk transport gives idle relay-host connections back sooner (preemption's pause).
    high, low = snippets.master_cf.split("smtpplus-high unix", 1)[1].split("smtpplus-low unix", 1)
    assert "smtp_connection_cache_time_limit" not in high
    assert "\n  -o smtp_connection_cache_time_limit=1s\n" in low
    checks = snippets.files["smtpplus_milter_header_checks"]
    assert "FILTER smtpplus-high:\n" in checks and "FILTER smtpplus-low:\n" in checks
    assert "normal" not in checks.split("# milter_header_checks")[1].split("\n", 1)[1]
    assert snippets.files["smtpplus_smtp_header_checks"].endswith("/^X-SMTPPlus-Queue:/ IGNORE\n")
    assert any("content_filter" in warning for warning in snippets.warnings)


def test_relayhost_becomes_explicit_next_hop(tmp_path: Path) -> None:
    snippets = generate(
        config_with(tmp_path).postfix, relayhost="[smarthost.example]:587", nexthops={"low": "[bulk.example]:25"}
    )
    checks = snippets.files["smtpplus_milter_header_checks"]
    assert "FILTER smtpplus-high:[smarthost.example]:587" in checks
    assert "FILTER smtpplus-low:[bulk.example]:25" in checks


def test_only_queues_in_use_get_a_transport(tmp_path: Path) -> None:
    queues = {1: "high", 2: "normal", 3: "normal", 4: "normal", 5: "normal"}
    snippets = generate(config_with(tmp_path, settings={"priority": {"queues": queues}}).postfix)
    assert "smtpplus-low" not in snippets.master_cf and "smtpplus-low" not in str(snippets.main_cf)


def test_cli_prints_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_with(tmp_path).path
    assert (
        main(
            [
                "postfix-config",
                "-c",
                str(path),
                "--relayhost",
                "[relay.example]:25",
                "--postfix-dir",
                str(tmp_path),
                "--write-files",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "FILTER smtpplus-high:[relay.example]:25" in out and "# WARNING: FILTER overrides content_filter" in out
    assert "\nenable_long_queue_ids = yes\n" in out  # tracking keys records by queue id
    assert (tmp_path / "smtpplus_milter_header_checks").read_text().count("FILTER") == 2
    # Written atomically, readable by Postfix's daemons, nothing left behind.
    assert (tmp_path / "smtpplus_milter_header_checks").stat().st_mode & 0o777 == 0o644
    assert not [item.name for item in tmp_path.iterdir() if item.name.startswith(".")]
    assert main(["postfix-config", "-c", str(path), "--relayhost", "", "--nexthop", "medium=x"]) == 2


def test_postfix_size_limit_lies_just_above_ours(tmp_path: Path) -> None:
    # Postfix's default message_size_limit (10240000) is below our 20 MiB: the milter's 552 would
    # never fire and 10-20 MB messages would get Postfix's own refusal.
    snippets = generate(config_with(tmp_path).postfix)
    ours = 20 * 1024 * 1024
    postfix = int(snippets.main_cf["message_size_limit"])
    assert ours < postfix <= ours + 2 * 1024 * 1024
    assert "mailbox_size_limit" not in snippets.main_cf  # Postfix's default 51200000 is above it


def test_large_limit_lifts_mailbox_size_limit(tmp_path: Path) -> None:
    # Postfix refuses to start when mailbox_size_limit < message_size_limit.
    inputs = config_with(tmp_path, settings={"limits": {"max_message_bytes": 60 * 1024 * 1024}}).postfix
    snippets = generate(inputs)
    assert int(snippets.main_cf["message_size_limit"]) > 60 * 1024 * 1024
    assert snippets.main_cf["mailbox_size_limit"] == "0"


def test_shipped_snippets_agree_with_the_default_limit() -> None:
    from smtpplus_milter.admin.postfix import postfix_size_limits

    root = Path(__file__).resolve().parents[2]
    snippet = (root / "deploy/postfix/main.cf.snippet").read_text(encoding="utf-8")
    expected = postfix_size_limits(20 * 1024 * 1024)["message_size_limit"]
    assert f"\nmessage_size_limit = {expected}\n" in snippet
    guide = (root / "deploy/README-install.md").read_text(encoding="utf-8")
    assert f"'message_size_limit={expected}'" in guide


def test_shipped_dovecot_snippet_needs_no_certificate() -> None:
    # Debian's dovecot-core without the snakeoil certificate does not start with ssl enabled
    # ("ssl_cert: Can't open file /etc/dovecot/private/dovecot.pem"); the auth-only Dovecot
    # of this set-up needs no TLS.
    root = Path(__file__).resolve().parents[2]
    lines = (root / "deploy/dovecot/10-smtpplus-auth.conf").read_text(encoding="utf-8").splitlines()
    assert "ssl = no" in [line.strip() for line in lines]


def _guide_section(number: int) -> str:
    guide = (Path(__file__).resolve().parents[2] / "deploy/README-install.md").read_text(encoding="utf-8")
    return guide.split(f"\n## {number}. ", 1)[1].split("\n## ", 1)[0]


def test_guide_gets_a_base_main_cf_and_looks_at_milters_before_postconf_e() -> None:
    section = _guide_section(7)
    first_change = section.index("```sh\npostconf -e")
    assert section.index("main.cf.debian") < first_change
    assert section.index("postconf smtpd_milters non_smtpd_milters") < first_change


def test_guide_main_cf_agrees_with_the_installer() -> None:
    import re

    from smtpplus_milter.admin.setup import MAIN_CF_FIXED

    section = _guide_section(7)
    block = section.split("```sh\npostconf -e \\\n", 1)[1].split("```", 1)[0]
    guide = dict(line.partition("=")[::2] for line in re.findall(r"'([^']*)'", block))
    for name, value in MAIN_CF_FIXED.items():
        assert guide.get(name) == value, name


def test_guide_names_the_listener_as_postconf_does() -> None:
    section = _guide_section(11)
    assert "'127.0.0.1:10025/inet" in section
    # The only other spelling may appear as the warning about it.
    assert section.count("smtpplus-alerts/inet") == section.count("only warns")


def test_a_return_path_gets_the_ingest_pipe(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(bytes(32))
    secret.chmod(0o600)
    settings = {
        "secret_file": str(secret),
        "bounces": {"return_path": "bounce.relay.example"},
        "tracking": {"store": f"sqlite:///{tmp_path}/t.db"},
    }
    config = config_with(tmp_path, settings=settings)
    snippets = generate(config.postfix)
    assert snippets.main_cf["transport_maps"] == "inline:{ bounce.relay.example=smtpplus-ingest: }"
    assert snippets.main_cf["relay_domains"] == "$mydestination, bounce.relay.example"
    assert snippets.main_cf["smtpplus-ingest_destination_recipient_limit"] == "1"
    pipe = snippets.master_cf.split("smtpplus-ingest unix", 1)[1]
    assert f"argv=/usr/local/bin/smtpplus-milter ingest -c {config.path} --recipient ${{recipient}}" in pipe
    assert "user=smtpplus" in pipe and "flags=Rq" in pipe
    assert any("relay_domains and transport_maps" in warning for warning in snippets.warnings)


@pytest.mark.parametrize(
    ("listen", "nexthop"),
    [
        pytest.param("unix:/run/smtpplus-ingest/ingest.sock", "unix:/run/smtpplus-ingest/ingest.sock", id="unix"),
        pytest.param("inet:10026@127.0.0.1", "inet:127.0.0.1:10026", id="inet"),
        pytest.param("inet6:10026@[::1]", "inet:[::1]:10026", id="inet6"),
    ],
)
def test_an_ingest_listen_gets_lmtp_instead_of_the_pipe(tmp_path: Path, listen: str, nexthop: str) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(bytes(32))
    secret.chmod(0o600)
    settings = {
        "secret_file": str(secret),
        "bounces": {"return_path": "bounce.relay.example", "ingest_listen": listen},
        "tracking": {"store": f"sqlite:///{tmp_path}/t.db"},
    }
    snippets = generate(config_with(tmp_path, settings=settings).postfix)
    assert snippets.main_cf["transport_maps"] == f"inline:{{ bounce.relay.example=smtpplus-ingest:{nexthop} }}"
    assert snippets.main_cf["smtpplus-ingest_destination_recipient_limit"] == "1"
    [entry, option] = [line for line in snippets.master_cf.splitlines() if "smtpplus-ingest" in line]
    assert entry.split() == ["smtpplus-ingest", "unix", "-", "-", "n", "-", "4", "lmtp"]
    assert option.split() == ["-o", "syslog_name=postfix/smtpplus-ingest"]
    assert "pipe" not in snippets.master_cf.split("smtpplus-ingest unix", 1)[1]


def test_no_return_path_no_pipe(tmp_path: Path) -> None:
    snippets = generate(config_with(tmp_path).postfix)
    assert "smtpplus-ingest" not in snippets.master_cf and "transport_maps" not in snippets.main_cf


def _master_services(master_cf: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """master.cf text -> service name -> (its fields, its -o options), as Postfix reads the lines."""
    services: dict[str, tuple[list[str], dict[str, str]]] = {}
    current: dict[str, str] = {}
    for line in master_cf.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace():
            flag, option = line.split()
            assert flag == "-o", line
            name, _, value = option.partition("=")
            current[name] = value
        else:
            fields = line.split()
            current = {}
            services[fields[0]] = (fields[1:], current)
    return services


def test_bcc_in_to_wires_the_fanout_filter_and_its_way_back(tmp_path: Path) -> None:
    inputs = config_with(tmp_path, settings={"lists": {"shop": {}, "crm": {"bcc_in_to": True}}}).postfix
    assert inputs.fanout
    snippets = generate(inputs, postfix_dir="/etc/postfix")
    checks = [
        line
        for line in snippets.files["smtpplus_milter_header_checks"].splitlines()
        if "FILTER" in line and not line.startswith("#")
    ]
    # The fanout line comes last: Postfix runs the last FILTER that matched.
    assert checks[-1] == "/^X-SMTPPlus-Fanout:/ FILTER smtpplus-fanout:unix:/run/smtpplus-fanout/fanout.sock"
    assert [line.split()[0] for line in checks[:-1]] == [
        "/^X-SMTPPlus-Queue:[[:space:]]*high[[:space:]]*$/",
        "/^X-SMTPPlus-Queue:[[:space:]]*low[[:space:]]*$/",
    ]
    assert snippets.main_cf["smtpplus-fanout_destination_recipient_limit"] == "1"
    assert snippets.main_cf["smtpplus_fanout_milters"] == ""
    services = _master_services(snippets.master_cf)
    fields, options = services["smtpplus-fanout"]
    assert fields == ["unix", "-", "-", "n", "-", "10", "lmtp"]
    assert options == {"syslog_name": "postfix/smtpplus-fanout"}
    fields, options = services["127.0.0.1:10027"]
    assert fields == ["inet", "n", "-", "n", "-", "-", "smtpd"]
    assert options["smtpd_milters"] == "$smtpplus_fanout_milters"  # never this milter: the DKIM signer
    assert options["content_filter"] == "" and options["non_smtpd_milters"] == ""
    assert options["receive_override_options"] == "no_unknown_recipient_checks,no_address_mappings"
    assert options["mynetworks"] == "127.0.0.0/8,[::1]/128"
    assert options["smtpd_client_restrictions"] == "permit_mynetworks,reject"
    assert options["smtpd_recipient_restrictions"] == "permit_mynetworks,reject"
    assert options["smtpd_sasl_auth_enable"] == "no"
    assert options["syslog_name"] == "postfix/smtpplus-reinject"
    # header_checks are cleanup(8)'s: the listener names a cleanup service that reads ours.
    assert "header_checks" not in options
    fields, cleanup = services[options["cleanup_service_name"]]
    assert fields == ["unix", "n", "-", "n", "-", "0", "cleanup"]
    assert cleanup["header_checks"] == "regexp:/etc/postfix/smtpplus_fanout_header_checks"
    assert cleanup["mime_header_checks"] == "" and cleanup["nested_header_checks"] == ""
    # The copies' table routes by priority and never back to the filter.
    reinject = [
        line
        for line in snippets.files["smtpplus_fanout_header_checks"].splitlines()
        if "FILTER" in line and not line.startswith("#")
    ]
    assert reinject == checks[:-1]
    assert "/^X-SMTPPlus-Fanout:/ IGNORE" in snippets.files["smtpplus_smtp_header_checks"].splitlines()
    warnings = " ".join(snippets.warnings)
    assert "smtpplus_fanout_milters is empty: put your DKIM signer there" in warnings
    assert "smtpplus-milter fanout" in warnings


def test_fanout_socket_and_reinject_come_from_the_inputs(tmp_path: Path) -> None:
    from dataclasses import replace

    from smtpplus_milter.config import HostPort, SocketSpec

    inputs = config_with(tmp_path, settings={"lists": {"shop": {"bcc_in_to": True}}}).postfix
    inputs = replace(
        inputs, fanout_listen=SocketSpec.parse("inet:10030@127.0.0.1"), fanout_reinject=HostPort("::1", 10031)
    )
    snippets = generate(inputs)
    assert (
        "/^X-SMTPPlus-Fanout:/ FILTER smtpplus-fanout:inet:127.0.0.1:10030"
        in snippets.files["smtpplus_milter_header_checks"].splitlines()
    )
    assert "[::1]:10031" in _master_services(snippets.master_cf)
    assert not any("not a loopback" in warning for warning in snippets.warnings)
    outside = generate(replace(inputs, fanout_reinject=HostPort("192.0.2.7", 10027)))
    assert any("192.0.2.7:10027 is not a loopback address" in warning for warning in outside.warnings)


@pytest.mark.parametrize(
    "lists",
    [
        pytest.param({"shop": {}}, id="no-list-splits"),
        pytest.param({"shop": {"bcc_in_to": False}}, id="bcc-in-to-false"),
    ],
)
def test_no_bcc_in_to_no_fanout_lines(tmp_path: Path, lists: dict[str, object]) -> None:
    inputs = config_with(tmp_path, settings={"lists": lists}).postfix
    snippets = generate(inputs)
    assert not inputs.fanout
    assert "fanout" not in snippets.master_cf + str(snippets.main_cf) + "".join(snippets.files.values())
    assert "smtpplus_fanout_header_checks" not in snippets.files
