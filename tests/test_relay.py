"""The replica's name in Redis: one per state dir, shared by the processes that share it
(the web server's and the queue worker's), different for another replica."""

from __future__ import annotations

import multiprocessing

from responder.relay import replica_id


def _name_in(directory, out):
    out.put(replica_id(directory))


def test_processes_sharing_a_state_dir_share_the_replica_name(tmp_path):
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=_name_in, args=(tmp_path / "a", out)) for _ in range(3)]
    for proc in procs:
        proc.start()
    names = {out.get(timeout=30) for _ in procs}
    for proc in procs:
        proc.join(30)
    assert names == {replica_id(tmp_path / "a")}
    assert replica_id(tmp_path / "b") not in names


def test_the_name_survives_a_restart_and_is_private(tmp_path):
    name = replica_id(tmp_path)
    assert replica_id(tmp_path) == name and len(name) == 32
    assert (tmp_path / "replica-id").stat().st_mode & 0o077 == 0
