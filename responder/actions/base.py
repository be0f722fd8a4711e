"""What every action shares: targets, parameters, results and the registry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import urllib3
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException


@dataclass(frozen=True)
class Target:
    """The Kubernetes objects an event points at; None where the event does not say."""

    namespace: str | None = None
    pod: str | None = None
    node: str | None = None
    container_id: str | None = None
    #: The uid of the pod verified to be the event's, when it was read before acting.
    pod_uid: str | None = None

    def describe(self, keys: Iterable[str]) -> dict[str, str]:
        """The named parts that are known, for output and logs."""
        return {k: v for k in keys if (v := getattr(self, k))}


class Outcome(StrEnum):
    DONE = "done"
    ALREADY_DONE = "already-done"
    WOULD_RUN = "would-run"
    SKIPPED = "skipped"
    COALESCED = "coalesced"
    FAILED = "failed"


@dataclass(frozen=True)
class ObjectRef:
    """The Kubernetes object an action touched, as an Event's involvedObject names it."""

    kind: str
    name: str
    namespace: str | None = None
    uid: str | None = None
    api_version: str = "v1"


@dataclass(frozen=True)
class Result:
    """What one action did; `reason` explains skipped, failed and already-done outcomes."""

    outcome: Outcome
    reason: str | None = None
    #: The object acted on, with its uid, when the API told us (for audit Events).
    involved: ObjectRef | None = None
    #: A failure worth trying again later (API down, 409, 429, 5xx), not a refusal.
    retryable: bool = False


def object_ref(obj: Any) -> ObjectRef | None:
    """An ObjectRef from a kubernetes client model (V1Pod, V1Node), or None."""
    meta = getattr(obj, "metadata", None)
    if meta is None or not meta.name:
        return None
    return ObjectRef(kind=getattr(obj, "kind", None) or type(obj).__name__.removeprefix("V1"),
                     name=meta.name, namespace=meta.namespace, uid=meta.uid)


@dataclass(frozen=True)
class Param:
    """One action parameter: its type, whether required, and extra value checks."""

    types: tuple[type, ...]
    required: bool = False
    check: Callable[[Any], list[str]] | None = None
    doc: str = ""

    def problems(self, value: Any) -> list[str]:
        # bool is an int in Python; a YAML `true` must not pass as a number.
        if isinstance(value, bool) and bool not in self.types or not isinstance(value, self.types):
            expected = " or ".join(_type_name(t) for t in self.types)
            return [f"must be {expected}, got {_type_name(type(value))}"]
        return self.check(value) if self.check else []


@dataclass(frozen=True)
class Rbac:
    """A permission an action needs, as a ClusterRole rule would grant it."""

    resource: str
    verbs: tuple[str, ...]
    api_group: str = ""


class Action:
    """One kind of response. Subclasses declare what they need and implement `run`."""

    name: ClassVar[str]
    #: Target parts that must be known, else the action is skipped with a reason.
    needs: ClassVar[tuple[str, ...]]
    params: ClassVar[Mapping[str, Param]] = {}
    rbac: ClassVar[tuple[Rbac, ...]] = ()
    #: False when the object is gone afterwards, so later actions on it are pointless.
    object_survives: ClassVar[bool] = True
    #: True when a wrong target costs a workload or capacity (a deletion, a cordon): such an
    #: action needs an event verified against the cluster, unless its table rule says
    #: `allow_unverified: true`. Marking (a label) is not destructive.
    destructive: ClassVar[bool] = False

    def __init__(self, core: CoreV1Api, request_timeout: float = 10.0):
        self.core = core
        self.timeout = request_timeout

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        raise NotImplementedError

    @classmethod
    def param_problems(cls, params: Any) -> list[tuple[str, str]]:
        """Every problem with a table rule's `params` for this action, as (key, reason)."""
        if not isinstance(params, dict):
            return [("params", f"must be a mapping, got {_type_name(type(params))}")]
        known = ", ".join(cls.params) or "none"
        problems = [(f"params.{k}", f"unknown parameter (known: {known})")
                    for k in params if k not in cls.params]
        for key, spec in cls.params.items():
            if key in params:
                problems += [(f"params.{key}", p) for p in spec.problems(params[key])]
            elif spec.required:
                problems.append((f"params.{key}", "required parameter is missing"))
        return problems


class Registry:
    """The actions a table may name. Built explicitly and passed in, never global."""

    def __init__(self, actions: Iterable[type[Action]]):
        self._actions = {a.name: a for a in actions}

    def get(self, name: str) -> type[Action] | None:
        return self._actions.get(name)

    def names(self) -> list[str]:
        return sorted(self._actions)

    def __iter__(self):
        return iter(self._actions.values())

    def instantiate(self, core: CoreV1Api, request_timeout: float) -> dict[str, Action]:
        return {name: cls(core, request_timeout) for name, cls in self._actions.items()}


def api_failure(exc: Exception) -> str:
    """A short, secret-free description of a failed Kubernetes call."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}: {_status_message(exc)}"
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return f"cannot reach the Kubernetes API: {type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


def _status_message(exc: ApiException) -> str:
    # The API server answers errors with a Status object whose `message` says why.
    try:
        message = json.loads(exc.body or "")["message"]
        return str(message)
    except (ValueError, KeyError, TypeError):
        return str(exc.reason or "no message")


def _type_name(t: type) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
             bool: "a boolean", float: "a number", type(None): "null"}
    return names.get(t, t.__name__)
