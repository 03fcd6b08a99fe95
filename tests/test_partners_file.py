"""Staff edit partners.yaml; 'spampots partners check' finds every mistake, by line, in one run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from conftest import REPO
from feeds.partners import check_partners_file, load_partners

RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Checking the partners file needs no store: SQLite only."""
    return f"sqlite:///{tmp_path}/store.db"


HASH = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("correct horse battery")

GOOD = f"""\
producer: {{name: CERT.br, contact: cert@example.org}}
sensors:
  br-isp1-home: {{addresses: [192.0.2.10], hostnames: [proxy1.example.net]}}
partners:
  twcert:
    name: TWCERT/CC
    economy: TW
    networks: {{asns: [3462], prefixes: [198.51.100.0/24], domains: [tw]}}
    feeds: [originating, returning]
    share: [ips, urls, samples]
    tlp: amber
    digest: {{to: [twcert@example.org], weekday: mon, time: "09:00", timezone: Asia/Taipei}}
    taxii: {{username: twcert, password_hash: "{HASH}"}}
  jpcert:
    name: JPCERT/CC
    economy: JP
    tlp: green
    taxii: {{username: jpcert, password_hash: "{HASH}", grants: [twcert-originating]}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "partners.yaml"
    path.write_text(text)
    return path


def line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def test_shipped_file_passes_with_a_line_per_partner(run_cli: RunCli) -> None:
    code, out, err = run_cli("partners", "check", str(REPO / "partners.yaml"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "twcert",
        "jpcert",
        "auscert",
        "certuy",
        "certpl",
        "hkcert",
    ]
    economies = {p.economy for p in load_partners(REPO / "partners.yaml").partners.values()}
    assert economies == {"TW", "JP", "AU", "UY", "PL", "HK"}


def test_three_mistakes_give_three_numbered_lines_and_exit_2(
    tmp_path: Path, run_cli: RunCli
) -> None:
    text = (
        GOOD.replace("economy: TW", "economy: TX")
        .replace("198.51.100.0/24", "198.51.100.7/24")
        .replace("tlp: green", "tlp: purple")
    )
    path = write(tmp_path, text)
    code, out, err = run_cli("partners", "check", str(path))
    assert code == 2
    assert out == ""
    problems = err.splitlines()[:-1]
    assert problems == [
        f"{path}:{line_of(text, 'economy: TX')}: partner 'twcert'.economy 'TX' is not an ISO "
        "3166-1 alpha-2 code; use two letters such as TW, JP or AU",
        f"{path}:{line_of(text, 'networks:')}: partner 'twcert'.networks.prefixes[0] "
        "'198.51.100.7/24' is not a CIDR prefix (198.51.100.7/24 has host bits set); write a "
        "network such as 198.51.100.0/24 with no host bits set",
        f"{path}:{line_of(text, 'purple')}: partner 'jpcert'.tlp 'purple' is not allowed; "
        "use one of clear, green, amber, amber+strict, red",
    ]
    assert err.splitlines()[-1] == "3 problem(s) found; nothing was changed"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("tlp: amber", "tlp: amber\n    colour: blue", "unknown key 'colour' in partner 'twcert'"),
        ("feeds: [originating, returning]", "feeds: [originatin]", "'originatin' is not allowed"),
        ("asns: [3462]", "asns: [AS3462]", "asns[0] 'AS3462' is not a whole number"),
        ("asns: [3462]", "asns: [4294967296]", "is not a whole number from 1 to 4294967295"),
        ("weekday: mon", "weekday: monday", "weekday 'monday' is not allowed"),
        ('time: "09:00"', 'time: "9 am"', "time '9 am' is not a time of day"),
        ("Asia/Taipei", "Asia/Taipeh", "timezone 'Asia/Taipeh' is not a time zone"),
        ("jpcert:", "twcert:", "duplicate partner id 'twcert'"),
        (
            "username: jpcert",
            "username: twcert",
            "username 'twcert' of partner 'jpcert' is already used",
        ),
        (
            f'password_hash: "{HASH}", grants',
            'password: "hunter2", grants',
            "plaintext password in partner 'jpcert'.taxii.password",
        ),
        (
            "[twcert-originating]",
            "[twcert-everything]",
            "granted 'twcert-everything', which is no collection",
        ),
        ("192.0.2.10", "192.0.2.300", "'192.0.2.300' is not an IP address"),
        ("digest: {to: [twcert@example.org]", "digest: {to: [twcert]", "'twcert' is not valid"),
    ],
)
def test_each_kind_of_mistake_is_named_on_its_line(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = GOOD.replace(old, new, 1) if old != "jpcert:" else GOOD.replace("  jpcert:", "  twcert:")
    assert text != GOOD
    config, problems = check_partners_file(write(tmp_path, text))
    assert config is None
    assert len(problems) == 1, problems
    problem = problems[0]
    assert expected in problem.what
    changed_line = next(
        n
        for n, (a, b) in enumerate(zip(GOOD.splitlines(), text.splitlines(), strict=False), 1)
        if a != b
    )
    assert problem.line == changed_line
    assert problem.todo


def test_invalid_yaml_is_one_numbered_line(tmp_path: Path, run_cli: RunCli) -> None:
    text = GOOD.replace("tlp: green", "tlp: [green")
    path = write(tmp_path, text)
    code, _, err = run_cli("partners", "check", str(path))
    assert code == 2
    first = err.splitlines()[0]
    assert first.startswith(f"{path}:")
    assert "invalid YAML" in first
    line = int(first.split(":")[1])
    assert line_of(text, "[green") <= line <= line_of(text, "[green") + 2


def test_missing_file_says_what_to_do(tmp_path: Path, run_cli: RunCli) -> None:
    code, _, err = run_cli("partners", "check", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "no such file" in err and "SPAMPOTS_PARTNERS" in err


def test_good_file_gives_collections_and_grants(tmp_path: Path) -> None:
    config = load_partners(write(tmp_path, GOOD))
    aliases = sorted(c.alias for c in config.collections.values())
    assert aliases == [
        "jpcert-originating",
        "jpcert-returning",
        "twcert-originating",
        "twcert-returning",
    ]
    again = load_partners(write(tmp_path, GOOD))
    assert set(config.collections) == set(again.collections)
    readable = sorted(c.alias for c in config.readable_collections("jpcert"))
    assert readable == ["jpcert-originating", "jpcert-returning", "twcert-originating"]
    assert sorted(c.alias for c in config.readable_collections("twcert")) == [
        "twcert-originating",
        "twcert-returning",
    ]
    assert config.readable_collections("nobody") == []


def test_hash_password_reads_stdin_and_prints_a_verifiable_argon2id_hash() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "feeds.cli", "partners", "hash-password"],
        input="a long enough partner password\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    assert digest.startswith("$argon2id$")
    assert PasswordHasher().verify(digest, "a long enough partner password")


def test_hash_password_refuses_a_short_password() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "feeds.cli", "partners", "hash-password"],
        input="short\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "shorter than 12" in result.stderr


def test_a_file_with_no_partners_yet_is_valid(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        producer: {name: CERT.br, contact: cert@example.org}
        partners: {}
    """)
    config, problems = check_partners_file(write(tmp_path, text))
    assert problems == []
    assert config is not None and config.partners == {}
