"""How the real-apiserver fixture finds its binaries: KUBEBUILDER_ASSETS first, else the
packed ones (unpacked once, cached) and etcd from PATH; missing ones skip, or fail in CI."""

import lzma
import os

import pytest

from . import apiserver
from .apiserver import kube_binary, unpack


def executable(path, text="#!/bin/sh\n"):
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def no_etcd(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))


def test_kubebuilder_assets_are_used_when_set(monkeypatch, tmp_path):
    for name in ("kube-apiserver", "etcd"):
        executable(tmp_path / name)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    assert kube_binary("kube-apiserver") == tmp_path / "kube-apiserver"
    assert kube_binary("etcd") == tmp_path / "etcd"


def test_what_the_assets_lack_comes_from_the_fallback(monkeypatch, tmp_path):
    assets, bin_dir = tmp_path / "assets", tmp_path / "bin"
    assets.mkdir()
    bin_dir.mkdir()
    etcd = executable(bin_dir / "etcd")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    monkeypatch.setenv("PATH", str(bin_dir))
    assert kube_binary("etcd") == etcd


def test_missing_etcd_skips_on_a_workstation(no_etcd, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="etcd-server"):
        kube_binary("etcd")


def test_missing_etcd_fails_in_ci(no_etcd, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="etcd-server"):
        kube_binary("etcd")


def test_missing_packed_apiserver_skips(no_etcd, monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(apiserver, "SHARED_K8S", tmp_path / "nowhere")
    with pytest.raises(pytest.skip.Exception, match="kube-apiserver.xz not found"):
        kube_binary("kube-apiserver")


def test_packed_binary_is_unpacked_once_executable_and_reused(tmp_path):
    packed = tmp_path / "tool.xz"
    packed.write_bytes(lzma.compress(b"#!/bin/sh\necho unpacked\n"))
    cache = tmp_path / "cache"
    first = unpack(packed, cache)
    assert first.name == "tool" and first.read_bytes() == b"#!/bin/sh\necho unpacked\n"
    assert os.access(first, os.X_OK)
    stamp = first.stat().st_mtime_ns
    assert unpack(packed, cache) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == ["tool"]  # no temporary left over
