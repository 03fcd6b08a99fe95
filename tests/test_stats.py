"""`spampots stats`: the seed's tables from the store, against the generator's own figures."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable

from ingest_helpers import GeneratedHome

CLI = Callable[..., tuple[int, str, str]]


def stats_json(run_cli: CLI, home: GeneratedHome, *args: str) -> dict[str, object]:
    code, out, err = run_cli("stats", "--format", "json", *args, env=home.environ)
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_json_figures_equal_what_was_generated(ingested: GeneratedHome, run_cli: CLI) -> None:
    expected = ingested.data.expected
    stats = stats_json(run_cli, ingested)
    assert set(stats) == {"totals", "by_cc", "by_asn", "ports", "requests"}
    totals = stats["totals"]
    assert totals == {
        "emails": expected.emails,
        "recipients": expected.recipients,
        "avg_recipients": round(expected.recipients / expected.emails, 2),
        "unique_ips": len(expected.src_ips),
        "unique_asns": expected.unique_asns,
        "unique_ccs": expected.unique_ccs,
    }
    top_cc = expected.by_cc.most_common(10)
    assert [(row["key"], row["count"]) for row in stats["by_cc"]][:3] == top_cc[:3]
    assert stats["by_cc"][0]["key"] == "TW"
    assert abs(stats["by_cc"][0]["share"] - top_cc[0][1] / expected.emails) < 1e-6
    assert len(stats["by_asn"]) == min(10, expected.unique_asns)
    for row in stats["by_asn"]:
        assert row["count"] == expected.by_asn[row["key"]]
    assert [row["count"] for row in stats["by_asn"]] == [
        n for _, n in expected.by_asn.most_common(10)
    ]
    assert {row["port"]: row["count"] for row in stats["ports"]} == dict(expected.ports)
    assert abs(sum(row["share"] for row in stats["ports"]) - 1) < 1e-4
    for module in ("socks", "http"):
        counts = stats["requests"][module]
        want = expected.requests[module]
        for key in ("connect_25", "connect_other", "get", "errors"):
            assert counts[key] == want[key], (module, key)
        assert counts["total"] == sum(want.values())


def test_time_window_and_other_formats(ingested: GeneratedHome, run_cli: CLI) -> None:
    everything = stats_json(run_cli, ingested)["totals"]
    nothing = stats_json(run_cli, ingested, "--until", "2000-01-01")["totals"]
    assert nothing["emails"] == 0 and nothing["avg_recipients"] == 0.0
    start = ingested.data.expected  # the generator starts at 2026-11-30T00:00Z
    early = stats_json(
        run_cli, ingested, "--since", "2026-11-30", "--until", "2026-11-30T00:04:00Z"
    )["totals"]
    late = stats_json(run_cli, ingested, "--since", "2026-11-30T00:04:00Z")["totals"]
    assert early["emails"] + late["emails"] == everything["emails"] == start.emails
    assert 0 < early["emails"] < everything["emails"]
    code, out, _ = run_cli("stats", "--format", "csv", env=ingested.environ)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    totals = {r["key"]: r["count"] for r in rows if r["table"] == "totals"}
    assert int(totals["emails"]) == everything["emails"]
    assert {r["table"] for r in rows} >= {"by_cc", "by_asn", "ports", "requests_socks"}
    code, out, _ = run_cli("stats", env=ingested.environ)
    assert code == 0
    assert f"{everything['emails']:,}" in out and "subtotal" in out and "TCP ports" in out
