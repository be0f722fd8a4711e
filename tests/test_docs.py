"""The documentation holds together: a short README that starts with the two commands, and
relative links (files and their #anchors) that resolve everywhere in README.md and docs/."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_LIMIT_BYTES = 12 * 1024

# [text](target) outside code; images too. A target has no spaces in our docs.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def markdown_files() -> list[Path]:
    """README.md, docs/, and the READMEs of the folders the docs link into."""
    files = [README, *sorted((ROOT / "docs").glob("*.md"))]
    files += [p for p in sorted(ROOT.glob("*/README.md")) if ".venv" not in p.parts]
    return files


def prose(text: str) -> str:
    """The text without fenced or inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if not match:
            continue
        slug, n = github_anchor(match.group(1)), 0
        while (slug if n == 0 else f"{slug}-{n}") in found:
            n += 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text()))
            if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken_link(source: Path, target: str) -> str | None:
    file_part, _, anchor = target.partition("#")
    resolved = (source.parent / file_part).resolve() if file_part else source
    if not resolved.exists():
        return f"{target}: no such file {os.path.relpath(resolved, ROOT)}"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"{target}: no heading #{anchor} in {os.path.relpath(resolved, ROOT)}"
    return None


def test_readme_stays_under_12_kb():
    size = len(README.read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes; move reference to docs/"


def test_readme_starts_with_the_install_and_serve_then_the_test_command():
    blocks = re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.S | re.M)
    assert blocks[:2] == ["pip install . && responder serve\n",
                          "pip install -e '.[test]' && python -m pytest\n"]


def test_ci_runs_the_readmes_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == "python -m pytest"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    problems = [p for t in relative_links(path) if (p := broken_link(path, t))]
    assert problems == []


def test_the_link_checker_catches_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Real heading\n\n## Intake: never lose an event\n")
    assert broken_link(page, "#intake-never-lose-an-event") is None
    assert broken_link(page, "page.md#real-heading") is None
    assert "no heading" in broken_link(page, "page.md#intake")
    assert "no such file" in broken_link(page, "gone.md")


def test_links_in_code_are_not_links():
    text = "see [a](b.md)\n```sh\necho [x](y.md)\n```\nand `[c](d.md)`\n"
    assert LINK.findall(prose(text)) == ["b.md"]
