"""The `responder` command: serve, check an action table, replay recorded events, approve or
reject a waiting response, undo what was done about one, list the actions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from .errors import ConfigError, EventError, TableError
from .logs import configure_cli_logging
from .settings import Settings

if TYPE_CHECKING:
    from .table import Table

# The rest is imported by the command that needs it: `responder serve`'s parent process
# only supervises, and stays small (about 25 MiB instead of 85) without the Kubernetes
# client and Flask.

ACTING_TOKEN_HELP = ("bearer token (or RESPONDER_TOKEN): the server's RESPONDER_OPERATOR_TOKEN, "
                     "or its RESPONDER_AUTH_TOKEN when it has none")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # `responder replay ... | head` is normal use
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="responder", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the webhook service under gunicorn")
    serve.add_argument("--host", help="listen address (RESPONDER_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="listen port (RESPONDER_PORT, default 2801)")
    serve.add_argument("--actions", help="action table file (RESPONDER_ACTIONS_FILE)")
    serve.set_defaults(run=_serve)

    work = sub.add_parser("work", help="run the queue worker alone (for RESPONDER_WORKER=off)")
    work.add_argument("--metrics-port", type=int, default=2802,
                      help="serve this process's /metrics here (0: don't)")
    work.set_defaults(run=_work)

    check = sub.add_parser("check", help="validate action table files; exit 1 on any error")
    check.add_argument("files", nargs="+", help="action table YAML files")
    check.set_defaults(run=_check)

    replay = sub.add_parser("replay", help="show what a table would do with recorded events")
    replay.add_argument("events", help="JSON-lines file of Falco events ('-' for stdin)")
    replay.add_argument("--actions", help="action table (default: the packaged table)")
    replay.add_argument("--format", choices=("json", "table"),
                        help="JSON lines (the default) or a human-readable table (the "
                        "default with --expect)")
    replay.add_argument("--against", metavar="OLD.yaml",
                        help="print only the events whose decisions differ from this table's")
    replay.add_argument("--expect", metavar="EXPECTED.jsonl",
                        help="compare the decisions to this recorded replay; exit 1 with the "
                        "differences")
    replay.add_argument("--write-expect", metavar="PATH", nargs="?", const="",
                        help="record the replay as an expectation at PATH (default: the "
                        "--expect file) instead of comparing")
    replay.add_argument("--to", metavar="URL",
                        help="instead, POST each event to a running responder and print replies")
    _remote_options(replay, "bearer token for --to (or RESPONDER_TOKEN)")
    replay.set_defaults(run=_replay)

    for verb in ("approve", "reject"):
        decide = sub.add_parser(verb, help=f"{verb} an event awaiting approval on a running "
                                "responder")
        decide.add_argument("uuid", help="the event's uuid (as in its Slack message or "
                            "GET /events/<uuid>)")
        decide.add_argument("--to", metavar="URL", required=True,
                            help="the responder's base URL, e.g. http://localhost:2801")
        _remote_options(decide, ACTING_TOKEN_HELP)
        decide.add_argument("--as", dest="by", metavar="NAME",
                            help="approver name recorded (default: your login name)")
        decide.set_defaults(run=_decide, verb=verb)

    undo = sub.add_parser("undo", help="ask a running responder to undo what it did about "
                          "an event")
    undo.add_argument("uuid", help="the event's uuid (as GET /events/<uuid> knows it)")
    undo.add_argument("--to", metavar="URL", required=True,
                      help="the responder's base URL, e.g. http://falco-responder:2801")
    _remote_options(undo, ACTING_TOKEN_HELP)
    undo.add_argument("--as", dest="by", metavar="NAME",
                      help="who undoes it, kept in the journal (default: your login name)")
    undo.set_defaults(run=_undo)

    actions = sub.add_parser("actions", help="list every action: parameters, needs, limits, "
                             "RBAC")
    shape = actions.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_const", const="json", dest="shape",
                       help="as JSON")
    shape.add_argument("--markdown", action="store_const", const="markdown", dest="shape",
                       help="as the Markdown of docs/actions.md")
    actions.set_defaults(run=_actions, shape="text")
    return parser


def _serve(args: argparse.Namespace) -> int:
    overrides = {k: str(v) for k, v in (("RESPONDER_HOST", args.host),
                                        ("RESPONDER_PORT", args.port),
                                        ("RESPONDER_ACTIONS_FILE", args.actions))
                 if v is not None}
    env = {**os.environ, **overrides}
    settings = Settings.from_env(env)
    if settings.intake.worker == "process" and settings.intake.mode == "queue":
        from .supervise import Supervisor

        # The children check the table and the rest; a server that cannot start stops both.
        return Supervisor(settings, env).run()
    from .server import run_server

    return run_server(env)


def _work(args: argparse.Namespace) -> int:
    import signal
    import threading

    # Before the slow imports: a SIGTERM while starting must still drain what waits, not
    # kill the process with events in the spool.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    from .server import run_worker

    return run_worker(args.metrics_port, stop)


def _remote_options(parser: argparse.ArgumentParser, token_help: str) -> None:
    parser.add_argument("--token", help=token_help)
    parser.add_argument("--cert", metavar="FILE", help="client certificate (PEM) for a "
                        "responder that requires one, as the shipped manifests do (or "
                        "RESPONDER_CLIENT_CERT)")
    parser.add_argument("--key", metavar="FILE", help="its private key, if not in --cert's "
                        "file (or RESPONDER_CLIENT_KEY)")
    parser.add_argument("--cacert", metavar="FILE", help="CA certificate to trust the "
                        "responder's by, e.g. gen-certs.sh's ca.crt (or RESPONDER_CA_FILE)")


def _remote(args: argparse.Namespace) -> Any:
    from .remote import Remote

    return Remote.of(args.to, args.token, args.cert, args.key, args.cacert)


def _check(args: argparse.Namespace) -> int:
    from .actions import default_registry
    from .table import load_table

    configure_cli_logging()
    registry = default_registry()
    status = 0
    for path in args.files:
        try:
            table = load_table(path, registry)
        except TableError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        print(f"{path}: OK, {len(table.rules)} rule(s)"
              f"{'' if table.dry_run else ', dry_run is OFF by default'}")
    return status


def _decide(args: argparse.Namespace) -> int:
    from .remote import post_decision

    return post_decision(args.to, args.uuid, args.verb, args.by, _remote(args), sys.stdout)


def _actions(args: argparse.Namespace) -> int:
    from .actions import default_registry
    from .catalog import describe_actions, format_markdown, format_text

    catalog = describe_actions(default_registry())
    if args.shape == "json":
        print(json.dumps(catalog, indent=2))
    elif args.shape == "markdown":
        sys.stdout.write(format_markdown(catalog))
    else:
        print(format_text(catalog))
    return 0


def _replay(args: argparse.Namespace) -> int:
    configure_cli_logging()
    _check_replay_options(args)
    with _open(args.events) as stream:
        if args.to:
            from .remote import post_events
            return post_events(stream, args.to, _remote(args), sys.stdout)
        from .actions import default_registry
        from .table import load_table

        registry = default_registry()
        table = load_table(args.actions, registry)
        if args.against or args.expect or args.write_expect is not None:
            return _replay_compared(args, stream.readlines(), table)
        lines = replay_events(stream, table)
        if args.format == "table":
            print(format_table(list(lines)))
        else:
            for line in lines:
                print(json.dumps(line))
    return 0


def _check_replay_options(args: argparse.Namespace) -> None:
    recording = args.write_expect is not None
    if args.to and (args.against or args.expect or recording):
        raise ConfigError("--to sends events to a responder: it cannot be combined with "
                          "--against, --expect or --write-expect")
    if args.against and (args.expect or recording):
        raise ConfigError("--against compares two tables, --expect a table and a recorded "
                          "replay: give one of them")
    if recording and not (args.write_expect or args.expect):
        raise ConfigError("--write-expect needs a path (or --expect's)")


def _replay_compared(args: argparse.Namespace, texts: list[str], table: Table) -> int:
    """--write-expect records the replay; --against and --expect print only the events
    decided differently. Only --expect turns a difference into exit status 1."""
    from .replaydiff import read_expectation, recorded_without_params, write_expectation
    from .tablediff import changed_events

    lines = list(replay_events(texts, table))
    if args.write_expect is not None:
        path = args.write_expect or args.expect
        print(f"{path}: recorded {write_expectation(path, lines)} replay line(s)",
              file=sys.stderr)
        return 0
    if args.against:
        from .actions import default_registry
        from .table import load_table

        before = list(replay_events(texts, load_table(args.against, default_registry())))
        about, sides = f"by {table.source} than by {args.against}", ("BEFORE", "AFTER")
    else:
        before = read_expectation(args.expect)
        about, sides = f"than recorded in {args.expect}", ("RECORDED", "NOW")
        if recorded_without_params(before):
            print(f"{args.expect}: recorded without params, which are then not compared; "
                  "record it again with --write-expect to hold them too", file=sys.stderr)
    changes = changed_events(before, lines)
    _print_changes(changes, args.format or ("table" if args.expect else "json"), sides)
    hint = "; if intended, record it again with --write-expect" if args.expect and changes else ""
    print(f"{len(changes)} of {len(lines)} event(s) decided differently {about}{hint}",
          file=sys.stderr)
    return 1 if args.expect and changes else 0


def _print_changes(changes: list[dict[str, Any]], shape: str, sides: tuple[str, str]) -> None:
    if shape == "table":
        if changes:
            from .replaydiff import format_changes

            print(format_changes(changes, *sides))
        return
    for change in changes:
        print(json.dumps(change))


def _undo(args: argparse.Namespace) -> int:
    from .remote import post_undo

    configure_cli_logging()
    return post_undo(args.to, args.uuid, args.by, _remote(args), sys.stdout)


def replay_events(stream: Iterable[str], table: Table, settings: Settings | None = None
                  ) -> Iterator[dict[str, Any]]:
    """One replay object per input line; bad lines give {"line": n, "error": ...} and go on."""
    from .actions import default_registry
    from .decisions import plan_response
    from .events import event_from_dict
    from .executor import Executor
    from .service import replay_line

    settings = settings or Settings()
    registry = default_registry()
    executor = Executor(actions=None)  # replay never touches a cluster
    for number, text in enumerate(stream, 1):
        if not text.strip():
            continue
        try:
            event = event_from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            yield {"line": number, "error": f"not valid JSON: {exc.msg} at column {exc.colno}"}
            continue
        except EventError as exc:
            yield {"line": number, "error": str(exc)}
            continue
        plan = plan_response(table, registry, event, own_namespace=settings.kubernetes.namespace,
                             force_dry_run=settings.table.force_dry_run)
        yield replay_line(plan, executor.execute(plan))


def format_table(lines: list[dict[str, Any]]) -> str:
    """A human-readable view of replay lines: one row per action (or per unmatched event)."""
    from .replaydiff import action_cells, format_columns, outcome_cell

    rows = [("FALCO RULE", "PRIORITY", "TABLE RULES", "ACTION", "TARGET", "OUTCOME")]
    for line in lines:
        if "error" in line:
            rows.append((f"line {line['line']}", "-", "-", "-", "-", "error: " + line["error"]))
            continue
        matched = ",".join(line["matched"]) or "-"
        for act in line["actions"] or [{"action": "-", "target": {}, "outcome": "no match"}]:
            rows.append((line["rule"], line["priority"], matched, *action_cells(act),
                         outcome_cell(act)))
    return format_columns(rows)


def _open(path: str) -> TextIO:
    if path == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read events: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
