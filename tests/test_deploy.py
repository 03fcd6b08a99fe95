"""deploy/ describes a production install that actually fits the service's own commands."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from feeds.cli import build_parser

DEPLOY = REPO / "deploy"
COMPOSE = Path(sys.executable).parent / "docker-compose"


@pytest.fixture(scope="module")
def compose() -> dict[str, object]:
    result = subprocess.run(
        [str(COMPOSE), "-f", str(DEPLOY / "compose.yaml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def assert_is_a_spampots_command(argv: list[str]) -> None:
    """The arguments parse as a spampots command line (argparse exits on anything unknown)."""
    build_parser().parse_args(argv)


def test_compose_config_passes_and_only_the_tls_proxy_is_exposed(compose: dict) -> None:
    services = compose["services"]
    assert set(services) >= {"postgres", "init", "serve", "worker", "proxy"}
    exposed = {name for name, service in services.items() if service.get("ports")}
    assert exposed == {"proxy"}
    assert [p["target"] for p in services["proxy"]["ports"]] == [443]


def test_compose_services_wait_for_health_and_keep_secrets_out_of_the_environment(
    compose: dict,
) -> None:
    services = compose["services"]
    for name in ("serve", "worker"):
        service = services[name]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert "healthcheck" in service
        environment = service["environment"]
        assert "SPAMPOTS_DATABASE_URL" not in environment
        assert environment["SPAMPOTS_DATABASE_URL_FILE"].startswith("/run/secrets/")
        assert_is_a_spampots_command(service["command"])
    assert services["proxy"]["depends_on"]["serve"]["condition"] == "service_healthy"
    assert "--workers" in services["serve"]["command"]
    assert services["worker"]["deploy"]["replicas"] == 2
    worker_keys = next(
        v for v in services["worker"]["volumes"] if v["target"] == "/run/secrets/spampots-keys"
    )
    assert worker_keys["read_only"] is True
    for volume in ("data", "spool", "pgdata"):
        assert volume in compose["volumes"]


def test_dockerfile_is_multi_stage_non_root_and_copies_no_secret() -> None:
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert sum(line.startswith("FROM ") for line in lines) >= 2
    users = [line for line in lines if line.startswith("USER ")]
    assert users and "root" not in users[-1] and not users[-1].endswith(" 0")
    assert 'ENTRYPOINT ["spampots"]' in lines
    copies = " ".join(line for line in lines if line.startswith(("COPY", "ADD")))
    for secret in ("keys", "secrets", "partners.yaml", ".pem", ".env"):
        assert secret not in copies


def unit_entries(path: Path) -> dict[str, list[str]]:
    """A systemd unit's [Service] entries; a key may repeat (Environment=, LoadCredential=)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            entries.setdefault(key, []).append(value)
    return entries


@pytest.mark.parametrize("unit", ["spampots-serve.service", "spampots-worker.service"])
def test_systemd_units_load_credentials_from_files_and_run_real_commands(unit: str) -> None:
    service = unit_entries(DEPLOY / "systemd" / unit)
    assert service["User"] == ["spampots"]
    assert "database-url:/etc/spampots/credentials/database-url" in service["LoadCredential"]
    assert "SPAMPOTS_DATABASE_URL_FILE=%d/database-url" in service["Environment"]
    [exec_start] = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/spampots")
    assert_is_a_spampots_command(argv[1:])


def test_proxy_allows_only_tls_12_and_newer() -> None:
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    assert "protocols tls1.2 tls1.3" in caddyfile
    assert "reverse_proxy serve:6100" in caddyfile
