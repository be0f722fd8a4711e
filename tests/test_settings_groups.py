"""Settings grouped by concern: each field declares its variable, default and parser once,
one reader parses every group (Slack's included) and one reader takes secrets from files."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from responder.errors import ConfigError
from responder.events import Priority
from responder.settings import GROUPS, Settings, all_variables

ROOT = Path(__file__).resolve().parent.parent / "responder"
WEBHOOK = "https://hooks.example/T/B/secretpart"


def group_fields():
    for group in (*GROUPS.values(), type(Settings.of(slack_webhook_url=WEBHOOK).slack)):
        for f in dataclasses.fields(group):
            if "env" in f.metadata:
                yield group, f


def test_every_variable_belongs_to_exactly_one_field_with_its_parser_beside_it():
    seen = [f.metadata["env"] for _, f in group_fields()]
    assert len(seen) == len(set(seen)) > 30
    assert all(callable(f.metadata["parse"]) and f.metadata["doc"] for _, f in group_fields())
    assert {"RESPONDER_AUTH_TOKEN_FILE", "RESPONDER_SLACK_TOKEN_FILE",
            "RESPONDER_SLACK_WEBHOOK_URL_FILE"} <= set(all_variables())


def test_defaults_live_on_the_fields_only():
    # Reading an empty environment must give exactly the dataclass defaults: no reader
    # writes a default of its own.
    read = Settings.from_env({})
    assert dataclasses.replace(read, kubernetes=dataclasses.replace(
        read.kubernetes, namespace=None)) == Settings()
    assert Settings().slack is None and Settings().intake.mode == "queue"


def test_flat_values_are_routed_to_their_groups_and_parsed_like_the_environment(tmp_path):
    token = tmp_path / "token"
    token.write_text("from-file\n")
    settings = Settings.of(kube_qps=5, dry_run=True, intake="inline", state_dir=str(tmp_path),
                           auth_token_file=str(token), log_level="debug",
                           slack_webhook_url=WEBHOOK, slack_min_priority="warning")
    assert settings.kubernetes.qps == 5.0 and isinstance(settings.kubernetes.qps, float)
    assert settings.table.force_dry_run is True
    assert (settings.intake.mode, settings.storage.state_dir) == ("inline", str(tmp_path))
    assert settings.auth.token == "from-file"
    assert settings.log.level == "DEBUG"
    assert (settings.slack.webhook_url, settings.slack.min_priority) == (WEBHOOK,
                                                                         Priority.WARNING)


def test_unknown_or_bad_flat_values_fail_naming_them():
    with pytest.raises(TypeError, match="RESPONDER_KUBE_QSP"):
        Settings.of(kube_qsp=5)
    with pytest.raises(ConfigError, match="RESPONDER_KUBE_QPS: must be a positive number"):
        Settings.of(kube_qps=0)


@pytest.mark.parametrize("name", ["RESPONDER_AUTH_TOKEN", "RESPONDER_SLACK_TOKEN",
                                  "RESPONDER_SLACK_WEBHOOK_URL"])
def test_every_secret_file_goes_through_the_same_reader(tmp_path, name):
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "bad").write_bytes(b"\xff\xfe")
    for path, message in ((tmp_path / "empty", "is empty"), (tmp_path / "bad", "not UTF-8"),
                          (tmp_path / "none", "cannot read")):
        with pytest.raises(ConfigError, match=f"^{name}_FILE: .*{message}"):
            Settings.from_env({f"{name}_FILE": str(path)})
    with pytest.raises(ConfigError, match=f"^{name} and {name}_FILE: set only one"):
        Settings.from_env({name: "x", f"{name}_FILE": str(tmp_path / "empty")})


def test_only_envvars_reads_secret_files():
    # One reader for `*_FILE`: nothing else in the package defines one or reads a file
    # whose name comes from a variable.
    defined = {}
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and "secret" in node.name:
                defined.setdefault(node.name, []).append(path.relative_to(ROOT).as_posix())
    assert defined == {"read_secret": ["envvars.py"], "read_secret_file": ["envvars.py"]}


def test_describe_names_every_variable_and_masks_secrets():
    settings = Settings.of(auth_token="s3cret-token", redis_url="redis://:hunter2@r:6379/0")
    shown = settings.describe()
    assert shown["RESPONDER_AUTH_TOKEN"] == shown["RESPONDER_REDIS_URL"] == "***"
    assert shown["RESPONDER_KUBE_QPS"] == 60.0
    assert "hunter2" not in repr(settings) + str(shown)
    assert "s3cret-token" not in repr(settings) + str(shown)
    names = {f.metadata["env"] for group, f in group_fields() if group in GROUPS.values()}
    assert set(shown) == names
