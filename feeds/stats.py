"""The seed's statistics tables, from the store (definitions in ingest-format.md).

``compute_stats`` returns the JSON form; ``render_text`` and ``render_csv`` print the same
figures. Shares are fractions of the table's total (0.7343 is 73.43%).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from feeds.errors import UsageError
from feeds.store import as_utc
from feeds.store.captures import messages, sessions

TOP = 10
REQUEST_KEYS = ("connect_25", "connect_other", "get", "errors", "total")


def parse_time(text: str, option: str) -> dt.datetime:
    """An RFC 3339 timestamp or a date (midnight UTC) given to ``option``."""
    try:
        value = dt.datetime.fromisoformat(text.strip().upper().replace(" ", "T"))
    except ValueError:
        raise UsageError(
            f"{option}: not a date or timestamp: {text!r}",
            hint="use YYYY-MM-DD or an RFC 3339 timestamp such as 2026-12-01T00:00:00Z",
        ) from None
    return as_utc(value)


def _window(column: Any, since: dt.datetime | None, until: dt.datetime | None) -> Any:
    conditions = []
    if since is not None:
        conditions.append(column >= since)
    if until is not None:
        conditions.append(column < until)
    return sa.and_(sa.true(), *conditions)


def _share(count: int, total: int) -> float:
    return round(count / total, 6) if total else 0.0


def compute_stats(
    engine: Engine, since: dt.datetime | None = None, until: dt.datetime | None = None
) -> dict[str, Any]:
    in_messages = _window(messages.c.ts, since, until)
    in_sessions = _window(sessions.c.ts, since, until)
    with engine.connect() as connection:
        emails, recipients, ips, asns, ccs = connection.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(messages.c.rcpt_count), 0),
                sa.func.count(sa.distinct(messages.c.src_ip)),
                sa.func.count(sa.distinct(messages.c.src_asn)),
                sa.func.count(sa.distinct(messages.c.src_cc)),
            ).where(in_messages)
        ).one()
        by_cc = _top(connection, messages.c.src_cc, in_messages, int(emails))
        by_asn = _top(connection, messages.c.src_asn, in_messages, int(emails))
        port_rows = connection.execute(
            sa.select(sessions.c.listen_port, sa.func.count().label("n"))
            .where(in_sessions)
            .group_by(sessions.c.listen_port)
            .order_by(sa.desc("n"), sessions.c.listen_port)
        ).all()
        request_rows = connection.execute(
            sa.select(sessions.c.service, sessions.c.result, sessions.c.dst_port, sa.func.count())
            .where(in_sessions)
            .group_by(sessions.c.service, sessions.c.result, sessions.c.dst_port)
        ).all()
    total_sessions = sum(int(n) for _, n in port_rows)
    requests = {module: dict.fromkeys(REQUEST_KEYS, 0) for module in ("socks", "http")}
    for service, result, dst_port, count in request_rows:
        module = (
            "socks"
            if service.startswith("socks")
            else "http"
            if service.startswith("http")
            else None
        )
        if module is None:
            continue
        key = {"get": "get", "error": "errors"}.get(result) or (
            "connect_25" if dst_port == 25 else "connect_other"
        )
        requests[module][key] += int(count)
        requests[module]["total"] += int(count)
    return {
        "totals": {
            "emails": int(emails),
            "recipients": int(recipients),
            "avg_recipients": round(int(recipients) / int(emails), 2) if emails else 0.0,
            "unique_ips": int(ips),
            "unique_asns": int(asns),
            "unique_ccs": int(ccs),
        },
        "by_cc": by_cc,
        "by_asn": by_asn,
        "ports": [
            {"port": int(port), "count": int(n), "share": _share(int(n), total_sessions)}
            for port, n in port_rows
        ],
        "requests": requests,
    }


def _top(connection: Any, column: Any, where: Any, total: int) -> list[dict[str, Any]]:
    rows = connection.execute(
        sa.select(column, sa.func.count().label("n"))
        .where(where)
        .group_by(column)
        .order_by(sa.desc("n"), column)
        .limit(TOP)
    ).all()
    return [{"key": key, "count": int(n), "share": _share(int(n), total)} for key, n in rows]


def as_names(engine: Engine, asns: list[int]) -> dict[int, str]:
    """A name for each AS, as the enrichment gave it (for the text table)."""
    if not asns:
        return {}
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(messages.c.src_asn, sa.func.max(messages.c.src_as_name))
            .where(messages.c.src_asn.in_(asns))
            .group_by(messages.c.src_asn)
        )
        return {int(asn): name or "" for asn, name in rows}


def _percent(share: float) -> str:
    return f"{share * 100:6.2f}%"


def render_text(stats: dict[str, Any], names: dict[int, str] | None = None) -> str:
    names = names or {}
    totals = stats["totals"]
    out = [
        "Total data collected",
        f"  e-mails captured                {totals['emails']:>15,}",
        f"  potential recipients            {totals['recipients']:>15,}",
        f"  average recipients per e-mail   {totals['avg_recipients']:>15.2f}",
        f"  unique IPs that injected spam   {totals['unique_ips']:>15,}",
        f"  unique ASes                     {totals['unique_asns']:>15,}",
        f"  unique country codes            {totals['unique_ccs']:>15,}",
    ]
    for title, key, label in (("country code", "by_cc", "CC"), ("AS", "by_asn", "AS")):
        out += ["", f"Distribution by {title} (top {TOP})", f"  {label:<40} {'e-mails':>15} share"]
        for row in stats[key]:
            shown = row["key"]
            if key == "by_asn" and shown is not None:
                shown = f"AS{shown} {names.get(shown, '')}".strip()[:40]
            out.append(
                f"  {shown if shown is not None else '(unknown)':<40} "
                f"{row['count']:>15,} {_percent(row['share'])}"
            )
        subtotal = sum(row["share"] for row in stats[key])
        out.append(
            f"  {'subtotal':<40} {sum(r['count'] for r in stats[key]):>15,} {_percent(subtotal)}"
        )
    out += ["", "TCP ports abused", f"  {'port':<8} {'sessions':>15} share"]
    out += [
        f"  {row['port']:<8} {row['count']:>15,} {_percent(row['share'])}" for row in stats["ports"]
    ]
    out += [
        "",
        "Requests to the SOCKS and HTTP modules",
        f"  {'type':<16} {'SOCKS':>15} {'':8} {'HTTP':>15}",
    ]
    socks, http = stats["requests"]["socks"], stats["requests"]["http"]
    for key in REQUEST_KEYS:
        s_share = _share(socks[key], socks["total"])
        h_share = _share(http[key], http["total"])
        out.append(
            f"  {key:<16} {socks[key]:>15,} {_percent(s_share)} "
            f"{http[key]:>15,} {_percent(h_share)}"
        )
    return "\n".join(out) + "\n"


def render_csv(stats: dict[str, Any]) -> str:
    """One table of ``table,key,count,share`` rows (totals carry their value in count)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table", "key", "count", "share"])
    for key, value in stats["totals"].items():
        writer.writerow(["totals", key, value, ""])
    for table in ("by_cc", "by_asn"):
        for row in stats[table]:
            writer.writerow(
                [table, "" if row["key"] is None else row["key"], row["count"], row["share"]]
            )
    for row in stats["ports"]:
        writer.writerow(["ports", row["port"], row["count"], row["share"]])
    for module in ("socks", "http"):
        counts = stats["requests"][module]
        for key in REQUEST_KEYS:
            writer.writerow(
                [f"requests_{module}", key, counts[key], _share(counts[key], counts["total"])]
            )
    return buffer.getvalue()
