"""Generated spool data for ingest tests: small, deterministic, with known figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feeds.generator import Generated, generate
from feeds.settings import Settings, load_settings


@dataclass
class GeneratedHome:
    """A data folder whose spool holds generated batches, and the settings that read it."""

    environ: dict[str, str]
    settings: Settings
    data: Generated


def generate_home(
    environ: dict[str, str], tmp_path: Path, messages: int = 300, **options: Any
) -> GeneratedHome:
    """Generate into the spool of ``environ``'s data folder; enrichment from the generator's
    .mmdb files."""
    spool = Path(environ["SPAMPOTS_HOME"]) / "spool"
    data = generate(spool, tmp_path / "mmdb", messages, **options)
    env = {
        **environ,
        "SPAMPOTS_COUNTRY_MMDB": str(data.country_mmdb),
        "SPAMPOTS_ASN_MMDB": str(data.asn_mmdb),
    }
    return GeneratedHome(env, load_settings(env), data)
