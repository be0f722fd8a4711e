"""Where evidence bundles are kept: a directory (`file://`, written atomically) or an S3
bucket (`s3://bucket/prefix`, through boto3: AWS, MinIO, Ceph). Stores never log or
report credentials; their errors say which store failed and why, nothing secret."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from .durable import fsync_directory
from .envvars import BadValue
from .errors import ConfigError, ResponderError
from .evidence import MANIFEST, digest_of, safe_name

logger = logging.getLogger(__name__)
URL_SETTING = "RESPONDER_EVIDENCE_URL"
SCHEMES = ("file", "s3")
REASON_LIMIT = 300
#: The most of a manifest.json read back: ours are a few KiB (one line per file); anything
#: larger in the store was put there by someone else and is not read whole.
MAX_MANIFEST_BYTES = 1024 * 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class EvidenceStoreError(ResponderError):
    """A store that cannot take or give back a bundle; the message is secret-free."""


class EvidenceStore(Protocol):
    """Keeps bundles by key (`<uuid>/<namespace>/<pod>/<time>`), each a set of named files."""

    def location(self, key: str) -> str:
        """Where the bundle of `key` is (or would be), as a URL people can follow."""

    def put(self, key: str, files: Mapping[str, bytes]) -> str:
        """Store a whole bundle; its location. Raises EvidenceStoreError."""

    def read(self, key: str, name: str, limit: int | None = None) -> bytes:
        """One file of a stored bundle, at most `limit` + 1 bytes of it (so a caller can
        tell it is longer). Raises EvidenceStoreError."""


def bundle_key(uuid: str, namespace: str, pod: str, now: datetime | None = None) -> str:
    """A new bundle's key: one safe segment per part (an event's names cannot climb out of
    the store), the capture time and a random suffix (a retried capture never overwrites)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return "/".join([safe_name(uuid), safe_name(namespace), safe_name(pod),
                     f"{stamp}-{secrets.token_hex(4)}"])


def check_evidence_url(raw: str) -> str:
    """The settings parser of RESPONDER_EVIDENCE_URL: file:///absolute/dir or s3://bucket[/prefix]."""
    parts = urlsplit(raw)
    if parts.scheme not in SCHEMES:
        raise BadValue("must start with file:// or s3://")
    if parts.scheme == "file" and (parts.netloc or not parts.path.startswith("/")):
        raise BadValue("a file:// URL names an absolute directory: file:///var/lib/evidence")
    # A bucket name has no ":" or "@": anything else there may be a credential.
    if parts.scheme == "s3" and ("@" in raw or not _BUCKET.match(parts.netloc)):
        raise BadValue("an s3:// URL names a bucket, and no credentials: s3://bucket/prefix")
    return raw


def check_endpoint_url(raw: str) -> str:
    """The settings parser of RESPONDER_EVIDENCE_ENDPOINT_URL: http(s), no credentials."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadValue("must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise BadValue("must hold no credentials (give them the standard AWS way)")
    return raw


def open_store(url: str | None, endpoint_url: str | None, state_dir: str | Path
               ) -> EvidenceStore:
    """The store `url` names; None: `evidence/` under the state directory."""
    if not url:
        return FileStore(Path(state_dir).expanduser() / "evidence")
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        return S3Store(parts.hostname or "", parts.path.strip("/"), endpoint_url)
    raise ConfigError(f"{URL_SETTING}: must start with file:// or s3://")


class FileStore:
    """Bundles as directories under `root`. A bundle is written in a hidden directory beside
    its place and renamed into it when whole, so a reader never sees half of one."""

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))

    def location(self, key: str) -> str:
        return self._path(key).as_uri() + "/"

    def put(self, key: str, files: Mapping[str, bytes]) -> str:
        final = self._path(key)
        work = final.parent / f".{final.name}.incoming"
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            work.mkdir()
            for name, data in files.items():
                _write_synced(self._inside(work, name), data)
            fsync_directory(work)
            os.rename(work, final)
            fsync_directory(final.parent)
        except OSError as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise EvidenceStoreError(f"file store {self.root}: cannot write the bundle: "
                                     f"{exc.strerror or type(exc).__name__}") from None
        return self.location(key)

    def read(self, key: str, name: str, limit: int | None = None) -> bytes:
        try:
            with open(self._inside(self._path(key), name), "rb") as found:
                return found.read(-1 if limit is None else limit + 1)
        except OSError as exc:
            raise EvidenceStoreError(f"file store {self.root}: cannot read {name}: "
                                     f"{exc.strerror or type(exc).__name__}") from None

    def _path(self, key: str) -> Path:
        return self._inside(self.root, key)

    @staticmethod
    def _inside(base: Path, relative: str) -> Path:
        # Keys and names are built from safe segments; this is the last line of defence.
        path = Path(os.path.normpath(base / relative))
        if not path.is_relative_to(base) or path == base:
            raise EvidenceStoreError(f"refused a path outside the store: {relative!r}")
        return path


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


class S3Store:
    """Bundles as objects `<prefix>/<key>/<name>` in an S3 bucket, through boto3 unmodified:
    credentials and region come the standard AWS way (environment, shared files, IRSA or
    instance roles); `endpoint_url` points it at MinIO, Ceph or another S3 service.
    manifest.json is written last: a bundle with one is whole."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None = None,
                 client: Any = None):
        self.bucket, self.prefix = bucket, prefix
        self.endpoint_url = endpoint_url
        self.client = client or _s3_client(endpoint_url)

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object(key, '')}"

    def put(self, key: str, files: Mapping[str, bytes]) -> str:
        # The manifest last: its presence says every file it lists is there.
        for name in sorted(files, key=lambda n: n == MANIFEST):
            self._call("write", name, lambda n=name: self.client.put_object(
                Bucket=self.bucket, Key=self._object(key, n), Body=files[n],
                ContentType=_content_type(n)))
        return self.location(key)

    def read(self, key: str, name: str, limit: int | None = None) -> bytes:
        answer = self._call("read", name, lambda: self.client.get_object(
            Bucket=self.bucket, Key=self._object(key, name)))
        body = answer["Body"]
        try:
            return self._call("read", name, lambda: body.read(
                None if limit is None else limit + 1))
        finally:
            body.close()

    def _object(self, key: str, name: str) -> str:
        return "/".join(p for p in (self.prefix, key, name) if p) + ("" if name else "/")

    def _call(self, verb: str, name: str, call: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except (BotoCoreError, ClientError) as exc:
            # botocore's messages name the operation and the error code, never a credential.
            reason = str(exc)[:REASON_LIMIT]
            raise EvidenceStoreError(f"S3 store s3://{self.bucket}/{self.prefix}: cannot "
                                     f"{verb} {name}: {reason}") from None


#: Seconds to connect and between reads, and tries per call. botocore's defaults (60 s,
#: up to 5 tries) would let a store that takes connections and never answers hold the
#: capture, and the isolation after it, for minutes, and a request thread the intake
#: shares as long on each evidence listing.
S3_CONNECT_SECONDS, S3_READ_SECONDS, S3_TRIES = 3, 3, 2


def _s3_client(endpoint_url: str | None) -> Any:
    import boto3  # here, not at import: only an s3:// store pays for loading it
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, config=Config(
        connect_timeout=S3_CONNECT_SECONDS, read_timeout=S3_READ_SECONDS,
        retries={"total_max_attempts": S3_TRIES, "mode": "standard"}))


def _content_type(name: str) -> str:
    return "application/json" if name.endswith(".json") else "text/plain; charset=utf-8"


def recorded_bundles(decisions: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The evidence bundles an event's decisions recorded (their `details`), in plan order."""
    return [d["details"] for d in decisions
            if isinstance(d.get("details"), dict) and "digest" in d["details"]
            and "key" in d["details"]]


def bundle_listing(store: EvidenceStore | None, details: Mapping[str, Any]) -> dict[str, Any]:
    """What `GET /events/<uuid>/evidence` says of one bundle a decision recorded: where it
    is, its digest, and its files as manifest.json (read back from the store) lists them;
    `verified` says whether that manifest still has the recorded digest."""
    key, location = str(details.get("key")), str(details.get("location"))
    out: dict[str, Any] = {"location": location, "digest": details.get("digest")}
    if store is None or store.location(key) != location:
        return {**out, "error": "the bundle is not in the configured evidence store"}
    try:
        manifest = store.read(key, MANIFEST, MAX_MANIFEST_BYTES)
    except EvidenceStoreError as exc:
        return {**out, "error": str(exc)}
    if len(manifest) > MAX_MANIFEST_BYTES:
        return {**out, "verified": False, "error": f"{MANIFEST} in the store is larger than "
                f"{MAX_MANIFEST_BYTES} bytes: not a bundle manifest"}
    verified = digest_of(manifest) == details.get("digest")
    try:
        listed = json.loads(manifest)
        files = [{"name": str(f["name"]), "size": int(f["size"]), "sha256": str(f["sha256"])}
                 for f in listed["files"]]
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
        # Whoever can write the store can write anything there (JSON nested 100,000 deep,
        # a size of 1e999): say so, never a 500.
        return {**out, "verified": verified,
                "error": f"{MANIFEST} in the store is not a bundle manifest"}
    captured_at = listed.get("captured_at")
    return {**out, "verified": verified,
            "captured_at": captured_at if isinstance(captured_at, str) else None,
            "files": [{"name": MANIFEST, "size": len(manifest)}, *files],
            "bytes": len(manifest) + sum(f["size"] for f in files)}
