"""The ``spampots`` command: thin, it parses arguments and calls the stages.

Every failure a person can meet is a :class:`~feeds.errors.SpampotsError`, shown as one line
with a non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

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

    run = commands.add_parser("run", help="set up and run the service on this machine")
    run.set_defaults(handler=cmd_run)
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


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from feeds.home import init_home
    from feeds.partners import load_partners

    for line in init_home(settings).lines():
        print(line)
    config = load_partners(settings.partners)
    for line in config.summary_lines():
        print(line)
    return 0


def one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(
            home=args.home, database_url=args.database_url, partners=args.partners
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
    except Exception as error:  # the last guard: a person never sees a traceback
        if args.debug:
            raise
        print(
            f"spampots: internal error: {type(error).__name__}: {one_line(str(error))}; "
            "run again with --debug and report the traceback",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
