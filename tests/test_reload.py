"""Live reload of the action table from a ConfigMap mount, swapped the way the kubelet does."""

import json
import os
from pathlib import Path

import pytest

from responder.app import create_app, shutdown
from responder.settings import Settings

from .conftest import recorded_events

V1 = """rules:
  - {name: first, match: {rules: ['Terminal shell in container']},
     actions: [{action: label-pod, params: {labels: {v: "1"}}}]}
"""
V2 = V1.replace("first", "second")
BROKEN = "rules:\n  - {name: Bad, match: {priority: '>>x'}, actions: [{action: explode}]}\n"


class ConfigMapMount:
    """A directory laid out like a kubelet ConfigMap volume: actions.yaml -> ..data/actions.yaml,
    ..data -> ..<timestamp>/. An update writes a new timestamp dir and renames ..data atomically.
    """

    def __init__(self, root: Path, text: str):
        self.root, self.version = root, 0
        self._write_version(text)
        os.symlink("..data/actions.yaml", root / "actions.yaml")

    @property
    def path(self) -> str:
        return str(self.root / "actions.yaml")

    def _write_version(self, text: str) -> None:
        self.version += 1
        new_dir = self.root / f"..2026_11_27_00_00_{self.version:02d}.000000001"
        new_dir.mkdir()
        (new_dir / "actions.yaml").write_text(text)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        os.symlink(new_dir.name, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", self.root / "..data")  # the atomic swap
        if old:
            for child in (self.root / old).iterdir():
                child.unlink()
            (self.root / old).rmdir()

    def update(self, text: str) -> None:
        self._write_version(text)


@pytest.fixture
def mount(tmp_path):
    return ConfigMapMount(tmp_path, V1)


@pytest.fixture
def app(mount, tmp_path):
    app = create_app(Settings.of(actions_file=mount.path, reload_seconds=0, intake="inline",
                              state_dir=str(tmp_path / "state")), api_client=None, slack=None)
    yield app
    shutdown(app)


def matched(app):
    reply = app.test_client().post("/", data=json.dumps(recorded_events()[0]))
    return reply.get_json()["matched"]


def test_symlink_swap_is_picked_up(app, mount):
    assert matched(app) == ["first"]
    mount.update(V2)
    assert app.extensions["reloader"].check() is True
    assert matched(app) == ["second"]


def test_unchanged_content_is_not_reloaded(app, mount):
    mount.update(V1)
    assert app.extensions["reloader"].check() is False


def test_invalid_new_table_keeps_the_last_good_one_and_says_why(capsys, app, mount):
    mount.update(BROKEN)
    assert app.extensions["reloader"].check() is False
    assert matched(app) == ["first"]
    log = capsys.readouterr().out
    assert "unknown action 'explode'" in log and "bad priority expression" in log
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 200
    assert any("unknown action 'explode'" in p for p in ready.get_json()["table_reload_errors"])
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert "responder_action_table_valid 0.0" in metrics
    assert "responder_action_table_reload_errors_total 1.0" in metrics
    mount.update(V2)  # fixing the file recovers
    assert app.extensions["reloader"].check() is True
    assert "table_reload_errors" not in app.test_client().get("/readyz").get_json()
    assert "responder_action_table_valid 1.0" in \
        app.test_client().get("/metrics").get_data(as_text=True)


def test_background_thread_reloads_without_help(mount):
    import time

    app = create_app(Settings.of(actions_file=mount.path, reload_seconds=0.05, intake="inline",
                              state_dir=str(mount.root / "..state")), api_client=None, slack=None)
    try:
        mount.update(V2)
        deadline = time.monotonic() + 5
        while matched(app) != ["second"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert matched(app) == ["second"]
    finally:
        shutdown(app)
