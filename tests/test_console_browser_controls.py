"""The alert page's controls in a real browser (headless chromium through selenium): log in
with a name, open an alert awaiting approval, click Approve, see the outcome, and the pod
deleted on the real kube-apiserver with the verdict naming the console user."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from .browser import chrome, require_chromium
from .netcat import FULL_CID, netcat_event
from .test_console_controls import APPROVAL

pytestmark = pytest.mark.slow
TOKEN = "browser-controls-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def browser():
    paths = require_chromium()
    with chrome(*paths) as session:
        yield session


@pytest.fixture
def server(apiserver, make_app, make_table):
    """The app with its own worker thread, on a loopback port."""
    app = make_app(make_table(APPROVAL), api_client=apiserver.api_client(),
                   auth_token=TOKEN, start_worker=True)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        thread.join(5)


def state_of(server, uuid):
    return requests.get(f"{server}/events/{uuid}", headers=AUTH, timeout=5).json()


def until(condition, seconds=15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_log_in_with_a_name_approve_an_alert_and_see_it_done(browser, server, cluster):
    node = cluster.add_node("node-a").metadata.name
    cluster.add_node("node-b")
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    reply = requests.post(server + "/", data=json.dumps(
        netcat_event("u-approve", namespace=cluster.namespace)), headers=AUTH, timeout=10)
    assert reply.status_code == 202, reply.text
    until(lambda: state_of(server, "u-approve")["state"] == "awaiting-approval")

    browser.delete_all_cookies()
    browser.get(server + "/ui/alerts/u-approve")
    wait = WebDriverWait(browser, 15)
    wait.until(ready.presence_of_element_located((By.ID, "token"))).send_keys(TOKEN)
    browser.find_element(By.ID, "name").send_keys("carol")
    browser.find_element(By.ID, "login").click()
    approve = wait.until(ready.element_to_be_clickable((By.ID, "approve")))
    assert browser.find_element(By.ID, "user").text == "carol"
    assert "awaiting approval" in browser.find_element(By.ID, "approval").text
    approve.click()

    message = wait.until(ready.visibility_of_element_located((By.ID, "said"))).text
    assert message.startswith("Approved")
    until(lambda: cluster.pod("web") is None)  # the worker acted on the real API server
    until(lambda: state_of(server, "u-approve")["state"] == "done")
    browser.refresh()
    verdict = wait.until(ready.presence_of_element_located((By.ID, "verdict"))).text
    assert "approved by carol (console) at " in verdict
    assert not browser.find_elements(By.ID, "approve")
    decisions = browser.find_element(By.ID, "decisions").text
    assert "delete-pod from table rule delete-on-approval" in decisions
