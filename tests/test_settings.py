"""Staff configure the service with SPAMPOTS_* variables; a bad value is one clear line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from feeds.errors import SettingError
from feeds.settings import SETTINGS, load_settings

RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Settings need no store: SQLite only."""
    return f"sqlite:///{tmp_path}/store.db"


def test_defaults_put_everything_under_the_data_folder() -> None:
    settings = load_settings({})
    assert settings.home == Path("var")
    assert settings.database_url == "sqlite:///var/spampots.db"
    assert settings.spool == Path("var/spool")
    assert settings.partners == Path("partners.yaml")
    assert settings.taxii_port == 6100
    assert all(settings.source(s.name) == "default" for s in SETTINGS)


def test_environment_overrides_and_home_moves_derived_paths() -> None:
    settings = load_settings({"SPAMPOTS_HOME": "/srv/spampots", "SPAMPOTS_TAXII_PORT": "8443"})
    assert settings.database_url == "sqlite:////srv/spampots/spampots.db"
    assert settings.keys_dir == Path("/srv/spampots/keys")
    assert settings.taxii_port == 8443
    assert settings.source("taxii_port") == "SPAMPOTS_TAXII_PORT"


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("SPAMPOTS_TAXII_PORT", "http", "1-65535"),
        ("SPAMPOTS_TAXII_PORT", "70000", "1-65535"),
        ("SPAMPOTS_DATABASE_URL", "mysql://x", "postgresql+psycopg"),
        ("SPAMPOTS_LOG_FORMAT", "xml", "one of text, json"),
        ("SPAMPOTS_SMTP_URL", "http://mail", "smtps://"),
    ],
)
def test_a_bad_value_names_the_setting_what_was_given_and_what_is_allowed(
    variable: str, value: str, allowed: str
) -> None:
    with pytest.raises(SettingError) as raised:
        load_settings({variable: value})
    message = str(raised.value)
    assert variable in message
    assert allowed in message
    assert "\n" not in message


def test_secret_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret-from-file\n")
    settings = load_settings({"SPAMPOTS_SMTP_PASSWORD_FILE": str(secret)})
    assert settings.smtp_password == "s3cret-from-file"
    assert settings.source("smtp_password") == "SPAMPOTS_SMTP_PASSWORD_FILE"


def test_missing_secret_file_is_a_setting_error(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="SPAMPOTS_SMTP_PASSWORD_FILE"):
        load_settings({"SPAMPOTS_SMTP_PASSWORD_FILE": str(tmp_path / "absent")})


def test_settings_command_masks_secrets(run_cli: RunCli) -> None:
    code, out, _ = run_cli(
        "settings",
        env={
            "SPAMPOTS_SMTP_PASSWORD": "hunter2-hunter2",
            "SPAMPOTS_DATABASE_URL": "postgresql+psycopg://feeds:pgpass-xyz@db.internal/feeds",
        },
    )
    assert code == 0
    assert "hunter2" not in out
    assert "pgpass-xyz" not in out
    assert "postgresql+psycopg://feeds:********@db.internal/feeds" in out
    assert "SPAMPOTS_SMTP_PASSWORD" in out


def test_cli_bad_setting_is_one_line_and_exit_2(run_cli: RunCli) -> None:
    code, out, err = run_cli("settings", env={"SPAMPOTS_MAX_PAGE_SIZE": "lots"})
    assert code == 2
    assert out == ""
    assert err.strip().count("\n") == 0
    assert "SPAMPOTS_MAX_PAGE_SIZE" in err and "'lots'" in err and "1-100000" in err


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from feeds import cli

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for setting in SETTINGS:
        assert setting.env in out
