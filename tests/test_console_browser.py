"""The console in a real browser (headless chromium through selenium) against `responder
serve` on a real port: log in, watch an alert arrive, open it, try a table change, and see
that what an alert carries is shown as text and never runs."""

from __future__ import annotations

import json

import pytest
import requests
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

from responder.console.session import COOKIE

from .browser import chrome, require_chromium
from .serving import served

pytestmark = pytest.mark.slow

TOKEN = "browser-test-token"
TABLE = """\
defaults: {dry_run: true}
rules:
  - name: label-shells
    match: {rules: ["Terminal shell in container"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
"""
XSS = "<script>window.__xss = 1; alert('xss')</script>"
IMG = "<img src=x onerror=\"window.__xss = 2\">"


def shell_event(uuid, **fields):
    return {"uuid": uuid, "rule": "Terminal shell in container", "priority": "Warning",
            "source": "syscall", "hostname": "node-a",
            "output": "A shell was spawned in a container (user=root shell=bash)",
            "output_fields": {"k8s.ns.name": "shop", "k8s.pod.name": "web-7d9f",
                              "proc.cmdline": "bash -i", **fields}}


@pytest.fixture(scope="module")
def browser():
    paths = require_chromium()
    with chrome(*paths) as session:
        yield session


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("console")
    (directory / "actions.yaml").write_text(TABLE)
    env = {"RESPONDER_AUTH_TOKEN": TOKEN, "RESPONDER_STATE_DIR": str(directory / "state"),
           "RESPONDER_ACTIONS_FILE": str(directory / "actions.yaml")}
    with served(env) as url:
        yield url


def send(server, body):
    reply = requests.post(server + "/", data=json.dumps(body), timeout=10,
                          headers={"Authorization": f"Bearer {TOKEN}",
                                   "Content-Type": "application/json"})
    assert reply.status_code == 202, reply.text


def wait(browser, condition, seconds=15):
    return WebDriverWait(browser, seconds).until(condition)


def log_in(browser, server):
    """A fresh login (the module's browser may hold a session from an earlier test)."""
    browser.delete_all_cookies()
    browser.get(server + "/ui/alerts")
    wait(browser, ready.presence_of_element_located((By.ID, "token")))
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait(browser, ready.presence_of_element_located((By.ID, "rows")))


def no_script_ran(browser):
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - raises when no JS alert is open
    assert browser.execute_script("return window.__xss === undefined")


def test_log_in_then_a_posted_alert_appears_without_a_reload_and_opens(browser, server):
    log_in(browser, server)
    assert browser.current_url.endswith("/ui/alerts")
    browser.execute_script("window.__same_page = true")
    send(server, shell_event("u-browser-1"))
    row = (By.CSS_SELECTOR, 'tr[data-uuid="u-browser-1"]')
    wait(browser, lambda b: b.find_element(By.ID, "refresh").click() or
         b.find_elements(*row))
    wait(browser, lambda b: "label-pod: would-run" in b.find_element(*row).text)
    assert browser.execute_script("return window.__same_page === true")  # no reload
    browser.find_element(*row).find_element(By.TAG_NAME, "a").click()
    wait(browser, ready.presence_of_element_located((By.ID, "decisions")))
    decisions = browser.find_element(By.ID, "decisions").text
    assert "label-pod from table rule label-shells" in decisions
    assert "no Kubernetes cluster configured" in decisions
    assert "bash -i" in browser.find_element(By.ID, "fields").text
    wait(browser, lambda b: "no Kubernetes cluster configured" in
         b.find_element(By.ID, "audit").text)


def test_editor_shows_errors_of_a_broken_table_then_the_diff_of_the_fixed_one(browser,
                                                                               server):
    log_in(browser, server)
    send(server, shell_event("u-browser-2"))
    browser.get(server + "/ui/table")
    editor = wait(browser, ready.presence_of_element_located((By.ID, "table-text")))
    assert "label-shells" in editor.get_attribute("value")
    editor.send_keys("      - action: delete-podz\n")
    problems = wait(browser, ready.visibility_of_element_located((By.ID, "problems")))
    assert "rule #1 (label-shells): actions[2].action: unknown action 'delete-podz'" \
        in problems.text
    editor.send_keys("\b\b\n")  # "delete-podz\n" -> "delete-pod\n"
    diff = wait(browser, ready.visibility_of_element_located((By.ID, "diff")))
    wait(browser, lambda b: "+ delete-pod: " in b.find_element(By.ID, "diff").text)
    assert "u-browser-2" in diff.text
    assert "no decision changes" not in browser.find_element(By.ID, "check-result").text
    # Never applied: the serving table is the file's.
    assert requests.get(server + "/readyz", timeout=5).json()["rules"] == 1


def test_an_alert_carrying_script_renders_as_text_and_runs_nothing(browser, server):
    log_in(browser, server)
    send(server, {**shell_event("u-xss", **{"proc.name": XSS, "fd.name": IMG}),
                  "output": f"shell {XSS} {IMG}"})
    browser.get(server + "/ui/alerts")
    row = (By.CSS_SELECTOR, 'tr[data-uuid="u-xss"]')
    wait(browser, lambda b: b.find_element(By.ID, "refresh").click() or b.find_elements(*row))
    no_script_ran(browser)
    browser.get(server + "/ui/alerts/u-xss")
    fields = wait(browser, ready.presence_of_element_located((By.ID, "fields"))).text
    assert XSS in fields and IMG in fields
    assert XSS in browser.find_element(By.ID, "output").text
    no_script_ran(browser)


def test_session_cookie_is_httponly_strict_and_holds_no_token(browser, server):
    log_in(browser, server)
    cookie = browser.get_cookie(COOKIE)
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False and cookie["path"] == "/ui/"  # plain HTTP here
    assert TOKEN not in cookie["value"]
    assert COOKIE not in browser.execute_script("return document.cookie")


def test_a_post_with_the_session_but_without_csrf_is_refused(browser, server):
    log_in(browser, server)
    cookies = {COOKIE: browser.get_cookie(COOKIE)["value"]}
    reply = requests.post(server + "/ui/table/check", json={"text": TABLE}, cookies=cookies,
                          timeout=10)
    assert reply.status_code == 403 and "CSRF" in reply.json()["error"]
    csrf = browser.find_element(By.TAG_NAME, "body").get_attribute("data-csrf")
    reply = requests.post(server + "/ui/table/check", json={"text": TABLE}, cookies=cookies,
                          headers={"X-CSRF-Token": csrf}, timeout=10)
    assert reply.status_code == 200 and reply.json()["ok"]
