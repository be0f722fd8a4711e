"""/readyz during a Kubernetes API blackhole: it answers at once from the background
probe's last result, and says the API is unreachable within a probe period or so."""

import socket
import time

import pytest
from kubernetes import client

from responder.kube import PROBE_TIMEOUT

ARMED = ("rules:\n  - {name: a, match: {rules: [x]}, dry_run: false,"
         " actions: [{action: cordon-node}]}")


@pytest.fixture
def blackhole():
    """An API server address that accepts connections and never answers: the kernel
    completes the handshake from the backlog, nobody reads."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.slow
def test_readyz_answers_at_once_and_reports_a_blackholed_api(make_app, make_table, blackhole):
    # Default configuration: urllib3's retries included, as in the cluster.
    api = client.ApiClient(client.Configuration(host=blackhole))
    http = make_app(make_table(ARMED), api_client=api).test_client()
    start, slowest, body = time.monotonic(), 0.0, {}
    while time.monotonic() - start < 15:
        asked = time.monotonic()
        reply = http.get("/readyz")
        slowest = max(slowest, time.monotonic() - asked)
        assert reply.status_code == 200
        body = reply.get_json()
        if "not reachable" in body["kubernetes_api"]:
            break
        time.sleep(0.2)
    assert "Kubernetes API not reachable" in body["kubernetes_api"], body
    assert body["kubernetes_api_checked_ago"] is not None
    # Half of PROBE_TIMEOUT: /readyz reads the probe's last answer, it never waits for one.
    assert slowest < PROBE_TIMEOUT / 2, f"/readyz took {slowest:.2f} s"
    # Found by one attempt of PROBE_TIMEOUT, not four (retries) of it.
    assert time.monotonic() - start < 6
