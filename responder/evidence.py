"""Evidence bundles, pure: secret values redacted from manifests, safe names, and the
manifest.json whose SHA-256 is the bundle's digest (its chain-of-custody fingerprint)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MANIFEST = "manifest.json"
FORMAT = 1
REDACTED = "[redacted]"
#: kubectl apply keeps the whole applied manifest, env values included, in this annotation.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def safe_name(text: str) -> str:
    """`text` as one path segment: itself when it is plainly safe (letters, digits, `.`, `_`,
    `-`, starting with a letter or digit, no `..`), else its safe characters and a hash of
    the whole, so an event's pod name can never climb out of the store ("../..")."""
    if _SAFE.match(text) and ".." not in text:
        return text
    kept = re.sub(r"[^A-Za-z0-9_-]", "_", text)[:60] or "_"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"x{kept}-{digest}"


def redact_env(obj: Any) -> Any:
    """A copy of a Kubernetes object (JSON form) with every env var's literal `value`
    replaced by REDACTED, wherever a pod spec or template holds one; `valueFrom` (a
    reference to a Secret or ConfigMap key, not the secret) is kept. The last-applied
    annotation, which repeats the manifest, is redacted the same way."""
    if isinstance(obj, list):
        return [redact_env(item) for item in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        if key == "env" and isinstance(value, list):
            out[key] = [_redacted_var(v) for v in value]
        elif key == "annotations" and isinstance(value, dict) and LAST_APPLIED in value:
            out[key] = {**value, LAST_APPLIED: _redacted_last_applied(value[LAST_APPLIED])}
        else:
            out[key] = redact_env(value)
    return out


def _redacted_var(var: Any) -> Any:
    if isinstance(var, dict) and "value" in var:
        return {**var, "value": REDACTED}
    return var


def _redacted_last_applied(text: Any) -> str:
    try:
        return json.dumps(redact_env(json.loads(text)), sort_keys=True)
    except (TypeError, ValueError):
        return REDACTED  # not the JSON kubectl writes: keep nothing of it


def to_json(value: Any) -> bytes:
    """The bytes of a JSON file in a bundle: sorted keys, indented, UTF-8, one newline."""
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
            + "\n").encode()


@dataclass(frozen=True)
class Bundle:
    """The files of one capture, manifest.json included, and the bundle's digest."""

    files: Mapping[str, bytes]
    digest: str

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.files[MANIFEST])

    @property
    def total_bytes(self) -> int:
        return sum(len(data) for data in self.files.values())


def build_bundle(files: Mapping[str, bytes], about: Mapping[str, Any]) -> Bundle:
    """The bundle of `files` (relative names to bytes): manifest.json lists each with its
    SHA-256 and size, plus `about` (event, pod, time); the digest is manifest.json's own
    SHA-256, `sha256:<hex>`."""
    if MANIFEST in files:
        raise ValueError(f"{MANIFEST} is the bundle's own")
    listed = [{"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
              for name, data in sorted(files.items())]
    manifest = to_json({"format": FORMAT, **about, "files": listed})
    return Bundle({**files, MANIFEST: manifest}, digest_of(manifest))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()

