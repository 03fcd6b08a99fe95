"""The ``spampots`` command: thin, it parses arguments and calls the stages.

Every failure a person can meet is a :class:`~feeds.errors.SpampotsError`, shown as one line
with a non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from feeds.errors import ConfigurationError, SpampotsError, UsageError
from feeds.partners import check_partners_file, hash_password
from feeds.settings import SETTINGS, Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _settings_epilog() -> str:
    lines = ["settings (environment variables; secrets may also come from NAME_FILE):"]
    for setting in SETTINGS:
        default = f" [default: {setting.default}]" if setting.default else ""
        lines.append(f"  {setting.env:<32} {setting.help}{default}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spampots",
        description="SpamPots partner feeds: ingest sensor data, publish signed STIX 2.1 "
        "over TAXII 2.1 per partner, and mail weekly digests.",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--home", help="data folder (overrides SPAMPOTS_HOME)")
    parser.add_argument("--database-url", help="store URL (overrides SPAMPOTS_DATABASE_URL)")
    parser.add_argument("--partners", help="partners file (overrides SPAMPOTS_PARTNERS)")
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="log lines (overrides SPAMPOTS_LOG_FORMAT)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = commands.add_parser(
        "init",
        help="create the data folder, migrate the store, create a signing key if there is none",
    )
    init.set_defaults(handler=cmd_init)

    settings = commands.add_parser("settings", help="print the effective settings, secrets masked")
    settings.set_defaults(handler=cmd_settings)

    partners = commands.add_parser("partners", help="check partners.yaml, hash passwords")
    partner_commands = partners.add_subparsers(
        dest="partners_command", metavar="ACTION", required=True
    )
    check = partner_commands.add_parser("check", help="validate the partners file")
    check.add_argument("file", nargs="?", help="file to check (default: SPAMPOTS_PARTNERS)")
    check.set_defaults(handler=cmd_partners_check)
    hasher = partner_commands.add_parser(
        "hash-password", help="read a password (prompt or stdin), print its argon2id hash"
    )
    hasher.set_defaults(handler=cmd_hash_password)

    serve = commands.add_parser("serve", help="run the TAXII 2.1 server (gunicorn)")
    serve.add_argument("--host", help="address to listen on (default: SPAMPOTS_TAXII_HOST)")
    serve.add_argument("--port", type=int, help="port (default: SPAMPOTS_TAXII_PORT)")
    serve.add_argument("--workers", type=int, help="processes (default: SPAMPOTS_TAXII_WORKERS)")
    serve.set_defaults(handler=cmd_serve)
    add_publishing_commands(commands)
    add_ingest_commands(commands)
    add_digest_commands(commands)
    add_service_commands(commands)
    return parser


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.home import init_home

    for line in init_home(settings).lines():
        print(line)
    return 0


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    rows = list(settings.shown())
    width = max(len(setting.env) for setting, _, _ in rows)
    for setting, value, source in rows:
        print(f"{setting.env:<{width}}  {value or '(empty)'}  [{source}]")
    return 0


def cmd_partners_check(args: argparse.Namespace, settings: Settings) -> int:
    config, problems = check_partners_file(args.file or settings.partners)
    if config is None:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(problems)} problem(s) found; nothing was changed", file=sys.stderr)
        return ConfigurationError.exit_code
    for line in config.summary_lines():
        print(line)
    return 0


def cmd_hash_password(
    args: argparse.Namespace, settings: Settings, stdin: TextIO | None = None
) -> int:
    source = stdin or sys.stdin
    if source.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ", hint="run the command again")
    else:
        password = source.readline().rstrip("\r\n")
    if len(password) < 12:
        raise UsageError(
            "the password is shorter than 12 characters",
            hint="choose a longer one, e.g. from a password manager",
        )
    print(hash_password(password))
    return 0


def add_service_commands(commands: Any) -> None:
    """worker, run (issue 7)."""
    worker = commands.add_parser(
        "worker", help="run the scheduled jobs (one worker is active, others stand by)"
    )
    worker.add_argument(
        "--check", action="store_true", help="exit 0 if a worker ticked recently (healthcheck)"
    )
    worker.set_defaults(handler=cmd_worker)
    run = commands.add_parser(
        "run", help="initialise, then run the worker and the TAXII server on this machine"
    )
    run.set_defaults(handler=cmd_run)
    status = commands.add_parser(
        "status", help="per partner: last batch, last poll, last digest, collection sizes"
    )
    status.set_defaults(handler=cmd_status)
    demo = commands.add_parser(
        "demo", help="generate a week of data, ingest, publish, write digests, then run"
    )
    demo.add_argument("--messages", type=int, default=6000, help="messages to generate")
    demo.set_defaults(handler=cmd_demo)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    if args.check:
        from feeds.worker import heartbeat_age

        age = heartbeat_age(settings)
        if age is None or age > 60:
            shown = "never" if age is None else f"{age:.0f} s ago"
            print(f"no worker heartbeat in {settings.home} (last: {shown})", file=sys.stderr)
            return 1
        return 0
    from feeds.service import run_worker

    return run_worker(settings)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt

    from feeds.home import open_store
    from feeds.partners import load_partners
    from feeds.status import partner_statuses

    config = load_partners(settings.partners)
    now = dt.datetime.now(dt.UTC)
    with open_store(settings).connect() as connection:
        statuses = partner_statuses(connection, config, now)
    for status in statuses:
        for line in status.lines(now):
            print(line)
    warned = sum(1 for status in statuses if status.warnings)
    print(f"{len(statuses)} partners, {warned} with warnings")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.demo import run_demo

    return run_demo(settings, args.messages)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.home import init_home
    from feeds.service import run_all

    for line in init_home(settings).lines():
        print(line)
    return run_all(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from taxii_server.serve import serve

    return serve(settings, host=args.host, port=args.port, workers=args.workers)


def add_publishing_commands(commands: Any) -> None:
    """keys, publish and verify (issue 5)."""
    keys = commands.add_parser(
        "keys", help="signing keys: generate, list, rotate, revoke, export-jwks"
    )
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    key_commands.add_parser(
        "generate", help="publish a new key as the next one (active if there is none)"
    ).set_defaults(handler=cmd_keys_generate)
    key_commands.add_parser("list", help="every key with its status").set_defaults(
        handler=cmd_keys_list
    )
    key_commands.add_parser(
        "rotate", help="activate the next key (made now if none); the active one retires"
    ).set_defaults(handler=cmd_keys_rotate)
    revoke = key_commands.add_parser(
        "revoke", help="take a compromised (not active) key out of the JWKS"
    )
    revoke.add_argument("kid", help="the key's kid, as 'keys list' shows it")
    revoke.set_defaults(handler=cmd_keys_revoke)
    export = key_commands.add_parser("export-jwks", help="print the public keys as a JWKS")
    export.add_argument("--out", help="write the JWKS to this file instead")
    export.set_defaults(handler=cmd_keys_export)

    publish = commands.add_parser(
        "publish", help="publish what was ingested since each collection's last batch"
    )
    publish.add_argument("--partner", help="only this partner's collections (its id)")
    publish.set_defaults(handler=cmd_publish)

    verify = commands.add_parser(
        "verify", help="partner side: poll a collection and verify every signed batch"
    )
    verify.add_argument("--url", required=True, help="the TAXII discovery URL")
    verify.add_argument("--collection", required=True, help="collection alias or id")
    verify.add_argument("--user", required=True, help="TAXII user name")
    verify.add_argument(
        "--password-file", required=True, help="file whose first line is the password"
    )
    verify.add_argument("--jwks", required=True, help="the producer's JWKS: URL or file")
    verify.add_argument("--out", help="write the verified objects as a STIX bundle here")
    verify.add_argument("--page-size", type=int, default=1000, help="objects per request")
    verify.add_argument(
        "--trust-kid",
        action="append",
        default=[],
        metavar="KID",
        help="accept only signatures by this key (repeat for several): the kids the "
        "producer announced out of band",
    )
    verify.set_defaults(handler=cmd_verify)


def cmd_keys_generate(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.home import open_store
    from feeds.keys import publish_next_key

    key = publish_next_key(open_store(settings), Path(settings.keys_dir))
    print(f"{key.kid} {key.status}")
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.home import open_store
    from feeds.keys import list_keys

    with open_store(settings).connect() as connection:
        for key in list_keys(connection):
            print(f"{key.kid} {key.status} created {key.created_at:%Y-%m-%d %H:%M:%S}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.home import open_store
    from feeds.keys import rotate_keys

    retired, active = rotate_keys(open_store(settings), Path(settings.keys_dir))
    if retired is not None:
        print(f"{retired.kid} retired (stays in the JWKS)")
    print(f"{active.kid} active")
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.home import open_store
    from feeds.keys import revoke_key

    key = revoke_key(open_store(settings), args.kid)
    print(f"{key.kid} revoked: no longer in the JWKS; tell the partners")
    return 0


def cmd_keys_export(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from feeds.home import open_store
    from feeds.keys import jwks

    with open_store(settings).connect() as connection:
        text = orjson.dumps(jwks(connection), option=orjson.OPT_INDENT_2)
    if args.out:
        Path(args.out).write_bytes(text + b"\n")
    else:
        print(text.decode("utf-8"))
    return 0


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.publish import publish

    for line in publish(settings, partner_id=args.partner).lines():
        print(line)
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.verify import read_password, verify_collection

    outcome = verify_collection(
        url=args.url,
        collection=args.collection,
        user=args.user,
        password=read_password(args.password_file),
        jwks_source=args.jwks,
        out=Path(args.out) if args.out else None,
        page_size=args.page_size,
        trusted_kids=frozenset(args.trust_kid),
    )
    return 0 if outcome.ok else 1


def add_digest_commands(commands: Any) -> None:
    """digest (issue 6)."""
    digest = commands.add_parser(
        "digest",
        help="build a partner's weekly digest: write it to the outbox, or --send it",
        description="One ISO week, Monday 00:00 to Monday 00:00 UTC. Without --send the "
        "message is written to $SPAMPOTS_HOME/outbox/ and its path printed.",
    )
    digest.add_argument("--partner", required=True, help="partner id from partners.yaml")
    digest.add_argument("--week", help="YYYY-Www (default: the last complete week)")
    digest.add_argument(
        "--send", action="store_true", help="mail it (SPAMPOTS_SMTP_URL) to digest.to, once"
    )
    digest.add_argument(
        "--resend", action="store_true", help="mail it again even if it was sent (implies --send)"
    )
    digest.add_argument(
        "--csv-dir",
        metavar="DIR",
        help="also write its complete CSVs (every row, even those a large digest leaves out) "
        "into DIR",
    )
    digest.set_defaults(handler=cmd_digest)


def cmd_digest(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.deliveries import DigestNotSent, send_digest, write_csvs, write_to_outbox
    from feeds.digest import build_digest, last_complete_week, parse_week
    from feeds.home import open_store
    from feeds.partners import load_partners

    week = parse_week(args.week) if args.week else last_complete_week()
    config = load_partners(settings.partners)
    engine = open_store(settings)
    if args.csv_dir:
        digest = build_digest(engine, config, args.partner, week)
        for path in write_csvs(digest, Path(args.csv_dir)):
            print(path)
    if not (args.send or args.resend):
        print(write_to_outbox(engine, settings, config, args.partner, week))
        return 0
    try:
        outcomes = send_digest(engine, settings, config, args.partner, week, resend=args.resend)
    except DigestNotSent as error:
        for outcome in error.outcomes:
            print(outcome.line())
        raise
    for outcome in outcomes:
        print(outcome.line())
    return 0


def one_line(text: str) -> str:
    return " ".join(text.split())


def add_ingest_commands(commands: Any) -> None:
    """ingest, quarantine and stats (issue 4)."""
    ingest = commands.add_parser(
        "ingest", help="ingest sensor batches: every complete one in the spool, or those named"
    )
    ingest.add_argument("paths", nargs="*", metavar="PATH", help="batch files or folders")
    ingest.add_argument(
        "--workers", type=int, help="parsing processes (default: SPAMPOTS_INGEST_WORKERS)"
    )
    ingest.set_defaults(handler=cmd_ingest)
    held = commands.add_parser("quarantine", help="records that broke the ingest contract")
    held_commands = held.add_subparsers(dest="quarantine_command", metavar="ACTION", required=True)
    listing = held_commands.add_parser("list", help="held records with batch, line and reason")
    listing.add_argument("--limit", type=int, default=None)
    listing.set_defaults(handler=cmd_quarantine_list)
    retry = held_commands.add_parser("retry", help="run held records through ingest again")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="only these (default: all)")
    retry.set_defaults(handler=cmd_quarantine_retry)
    stats = commands.add_parser("stats", help="the seed's statistics tables from the store")
    stats.add_argument("--since", help="from this date or RFC 3339 time (inclusive)")
    stats.add_argument("--until", help="to this date or RFC 3339 time (exclusive)")
    stats.add_argument("--format", choices=("text", "csv", "json"), default="text")
    stats.set_defaults(handler=cmd_stats)
    retention = commands.add_parser(
        "retention",
        help="remove captures older than SPAMPOTS_RETENTION_DAYS (whole weeks); on PostgreSQL "
        "also make the coming weeks' partitions",
    )
    retention.set_defaults(handler=cmd_retention)


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.ingest import batch_paths, ingest_run

    if args.workers is not None and not 1 <= args.workers <= 64:
        raise UsageError(f"--workers: got {args.workers}", hint="give 1 to 64")
    paths = batch_paths(args.paths) if args.paths else None
    reports = ingest_run(settings, workers=args.workers).run(paths)
    for report in reports:
        print(report.line())
    if not reports:
        print("no complete batches to ingest")
    return 1 if any(report.status == "failed" for report in reports) else 0


def cmd_quarantine_list(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.ingest import ingest_run
    from feeds.quarantine import list_quarantined

    held = list_quarantined(ingest_run(settings, workers=1), limit=args.limit)
    for record in held:
        print(f"{record.id}  {record.batch}:{record.line}  {record.reason}")
        print(f"    {record.record[:300]}")
    print(f"{len(held)} record(s) held")
    return 0


def cmd_quarantine_retry(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.ingest import ingest_run
    from feeds.quarantine import retry_quarantined

    report = retry_quarantined(ingest_run(settings), args.ids)
    print(
        f"retried {report.retried}: {report.released} released into the store, "
        f"{report.still_held} still held"
    )
    return 0


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from feeds.home import open_store
    from feeds.stats import as_names, compute_stats, parse_time, render_csv, render_text

    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    engine = open_store(settings)
    stats = compute_stats(engine, since, until)
    if args.format == "json":
        print(json.dumps(stats, indent=2))
    elif args.format == "csv":
        print(render_csv(stats), end="")
    else:
        names = as_names(engine, [row["key"] for row in stats["by_asn"] if row["key"]])
        print(render_text(stats, names), end="")
    return 0


def cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt

    from feeds.home import open_store
    from feeds.retention import apply_retention

    report = apply_retention(open_store(settings), settings.retention_days, dt.datetime.now(dt.UTC))
    print(report.line())
    return 0


def _kid_as_argument(argv: list[str]) -> list[str]:
    """A kid is a base64url thumbprint: one in 64 begins with "-", which argparse would take
    for an option ("the following arguments are required: kid"). After ``keys revoke`` the
    last word is the kid whatever it begins with."""
    kid = argv[-1] if argv[-3:-1] == ["keys", "revoke"] else ""
    if kid.startswith("-") and kid not in ("-h", "--help"):
        return [*argv[:-1], "--", kid]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_kid_as_argument(list(sys.argv[1:] if argv is None else argv)))
    try:
        settings = load_settings(
            home=args.home,
            database_url=args.database_url,
            partners=args.partners,
            log_format=args.log_format,
        )
        handler: Handler = args.handler
        return handler(args, settings)
    except SpampotsError as error:
        if args.debug:
            raise
        print(f"spampots: error: {one_line(str(error))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:  # the last guard: a person never sees a traceback
        if args.debug:
            raise
        from sqlalchemy.exc import OperationalError

        if isinstance(error, OperationalError):  # e.g. PostgreSQL restarted during the run
            from feeds.store import store_unavailable

            unavailable = store_unavailable(error)
            print(f"spampots: error: {one_line(str(unavailable))}", file=sys.stderr)
            return unavailable.exit_code
        print(
            f"spampots: internal error: {type(error).__name__}: {one_line(str(error))}; "
            "run again with --debug and report the traceback",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
