"""The wake-up socket is a file only the responder's uid can reach: not an abstract name
that any process in the pod's network namespace could flood or bind first."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from responder.wakeup import WakeListener, WakeSender, wake_path

NOBODY = 65534


def abstract_names() -> list[str]:
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return [line.split()[-1] for line in lines if line.split()[-1].startswith("@")]


def send(spool: Path) -> None:
    sender = WakeSender(spool)
    sender.set()
    sender.close()


def test_the_socket_is_a_private_file_in_the_spool_not_an_abstract_name(tmp_path):
    before = set(abstract_names())
    listener = WakeListener(tmp_path / "spool", threading.Event()).start()
    try:
        assert listener.listening
        path = wake_path(tmp_path / "spool")
        assert path.is_relative_to((tmp_path / "spool").resolve())
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not {n for n in set(abstract_names()) - before if "falco-responder" in n}
    finally:
        listener.close()
    assert not path.exists()


def test_a_socket_left_by_a_killed_listener_is_replaced(tmp_path):
    path = wake_path(tmp_path / "spool")
    path.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(path))  # closed without unlinking: what SIGKILL leaves
    woken = threading.Event()
    listener = WakeListener(tmp_path / "spool", woken).start()
    try:
        assert listener.listening
        send(tmp_path / "spool")
        assert woken.wait(5)
    finally:
        listener.close()


def test_a_spool_path_too_long_for_a_socket_address_still_wakes(tmp_path):
    spool = tmp_path / ("d" * 60) / ("e" * 60) / "spool"
    woken = threading.Event()
    listener = WakeListener(spool, woken).start()
    try:
        assert listener.listening and len(str(wake_path(spool))) > 108
        send(spool)
        assert woken.wait(5)
    finally:
        listener.close()


def send_as(uid: int, address: str) -> int:
    """Send one datagram from a forked child running as `uid`: 0 sent, 13 refused (EACCES)."""
    pid = os.fork()
    if pid == 0:  # the child only sets its uid, sends and exits
        code = 0
        try:
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"!", address)
        except OSError as exc:
            code = exc.errno or 1
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to send as another uid")
def test_another_uid_cannot_send(tmp_path):
    # A state directory others may enter, as a volume would be: only `wake/` keeps them out.
    state = Path(tempfile.mkdtemp(prefix="wake-"))
    state.chmod(0o755)
    woken = threading.Event()
    listener = WakeListener(state / "spool", woken).start()
    try:
        (state / "spool").chmod(0o755)
        address = str(wake_path(state / "spool"))
        assert send_as(NOBODY, address) == errno.EACCES
        assert not woken.wait(0.3)
        assert send_as(os.getuid(), address) == 0 and woken.wait(5)
    finally:
        listener.close()
        shutil.rmtree(state)
