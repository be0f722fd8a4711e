"""A real browser for console tests and screenshots: Debian's headless chromium, driven by
selenium through chromium-driver; skipped on a machine without them, unless in CI."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"


def chromium_paths() -> tuple[str, str] | None:
    browser = next((p for name in CHROMIUM if (p := shutil.which(name))), None)
    driver = shutil.which(DRIVER)
    return (browser, driver) if browser and driver else None


def require_chromium() -> tuple[str, str]:
    """The browser and driver paths; skips the test without them, fails in CI."""
    import pytest

    found = chromium_paths()
    if found is None:
        message = "chromium and chromium-driver not installed (Debian; see .ci/apt-packages)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@contextmanager
def chrome(browser: str, driver: str, width: int = 1400, height: int = 900) -> Iterator:
    """A headless chromium with a profile of its own, quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--no-first-run", "--disable-extensions",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    service = Service(executable_path=driver, log_output=os.devnull)
    session = webdriver.Chrome(options=options, service=service)
    try:
        yield session
    finally:
        session.quit()
