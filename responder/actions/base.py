"""What every action shares: targets, parameters, results, checks, limits and the registry."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

import urllib3
from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

if TYPE_CHECKING:
    from ..shared import SharedState


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
    #: What the action saw and did, kept in the journal with the outcome: what `undo`
    #: needs (a label's previous value, whether the node was schedulable) and what people
    #: need (an evidence bundle's digest). JSON-serialisable, secret-free.
    details: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Incident:
    """What an action may know beyond its target: the event it answers and what the
    decisions before it in the same plan came to (evidence records them)."""

    uuid: str
    #: The event as received (Falco's JSON), and the table rule the action belongs to.
    event: Mapping[str, Any]
    table_rule: str
    #: The reports (`ActionReport.to_dict()`) of the plan's earlier decisions.
    earlier: tuple[Mapping[str, Any], ...] = ()
    #: The event's pod (a V1Pod) as the executor read it before the plan's actions; None
    #: when it was not read. An action that needs more of it than the target (a capture's
    #: manifest, detach's labels) takes it from here: each read is a request of the
    #: containment budget (pods.known_pod).
    pod: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Kind:
    """The kind of object an action acts on, and which part of the target names it: the
    audit Event of an action whose API answer did not come back (e.g. "already gone") is
    still attached to the object by that name."""

    kind: str
    api_version: str
    #: The Target attribute holding the object's name ("pod", "node").
    name_from: str
    namespaced: bool

    def ref(self, target: Target) -> ObjectRef | None:
        name = getattr(target, self.name_from)
        namespace = target.namespace if self.namespaced else None
        if not name or (self.namespaced and not namespace):
            return None
        return ObjectRef(self.kind, name, namespace, api_version=self.api_version)


def object_ref(obj: Any, kind: Kind | None = None) -> ObjectRef | None:
    """An ObjectRef from a kubernetes client model, with the object's own apiVersion and kind
    as the API server returned them (`kind` says them where the answer left them out)."""
    meta = getattr(obj, "metadata", None)
    if meta is None or not meta.name:
        return None
    kind_name = getattr(obj, "kind", None) or (kind.kind if kind else
                                               type(obj).__name__.removeprefix("V1"))
    api_version = getattr(obj, "api_version", None) or (kind.api_version if kind else "v1")
    return ObjectRef(kind=kind_name, name=meta.name, namespace=meta.namespace, uid=meta.uid,
                     api_version=api_version)


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
    """A permission an action needs, as a ClusterRole rule would grant it, and why."""

    resource: str
    verbs: tuple[str, ...]
    api_group: str = ""
    why: str = ""


@dataclass(frozen=True)
class Limit:
    """A blast-radius limit an action obeys, set in the table's `defaults` under `key`."""

    key: str
    default: int
    doc: str = ""
    low: int = 0

    def problems(self, value: Any) -> list[str]:
        if isinstance(value, bool) or not isinstance(value, int) or value < self.low:
            return [f"must be a number of at least {self.low}"]
        return []


@dataclass(frozen=True)
class Limits:
    """Blast-radius limits from the table's `defaults`: the generic ones, and the values of
    the limits actions declare (`Action.limits`), by key."""

    #: Events for the same (table rule, namespace, pod) inside this window run once.
    coalesce_seconds: float = 30.0
    skip_standalone_pods: bool = False
    declared: Mapping[str, int] = field(default_factory=dict)

    def value(self, limit: Limit) -> int:
        """The table's value for an action's limit, else the limit's default."""
        return self.declared.get(limit.key, limit.default)


@dataclass(frozen=True)
class PodFacts:
    """What the API says about the event's pod, read once per event before any action."""

    exists: bool
    node: str | None = None
    uid: str | None = None
    container_ids: tuple[str, ...] = ()
    owner_kinds: tuple[str, ...] = ()
    #: The pod is being deleted (its deletionTimestamp is set), with this many seconds of
    #: grace (deletionGracePeriodSeconds; None while it is not being deleted).
    deleting: bool = False
    deletion_grace_seconds: int | None = None
    #: The V1Pod these facts were read from (Incident.pod).
    obj: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Clearance:
    """The guardrails' answer for one action: `reason` to skip it; else run it (or take
    `answer` instead) and tell `settle` the result (a deletion then counts against the limit
    only if it happened)."""

    reason: str | None = None
    settle: Callable[[Result], None] = lambda result: None
    #: The action's result without running it: what it would do is done already (the pod
    #: read before acting is being deleted, say).
    answer: Result | None = None


@dataclass(frozen=True)
class Services:
    """What actions may use besides the Kubernetes API, built from settings by wiring.py and
    passed in (never global)."""

    #: Where evidence bundles are kept (an evidencestore.EvidenceStore); None: nowhere.
    evidence: Any = None


@dataclass(frozen=True)
class Guard:
    """What an action's own limit check may use: the plan's limits, the state replicas
    share, `trip` (name, reason) -> reason, which counts, logs and alerts a tripped
    limit, and the table rule's params for the action."""

    limits: Limits
    shared: SharedState
    trip: Callable[[str, str], str]
    params: Mapping[str, Any] = field(default_factory=dict)


class Action:
    """One kind of response. Subclasses declare what they need and implement `run`; the
    guardrails and the executor know an action only through these declarations."""

    name: ClassVar[str]
    #: Target parts that must be known, else the action is skipped with a reason.
    needs: ClassVar[tuple[str, ...]]
    #: The object the action acts on, for its audit Event when the API's answer did not name
    #: it (None: such an outcome gets no Event).
    acts_on: ClassVar[Kind | None] = None
    params: ClassVar[Mapping[str, Param]] = {}
    rbac: ClassVar[tuple[Rbac, ...]] = ()
    #: The table `defaults` this action's `clear` obeys.
    limits: ClassVar[tuple[Limit, ...]] = ()
    #: False when the object is gone afterwards, so later actions on it are pointless.
    object_survives: ClassVar[bool] = True
    #: True when a wrong target costs a workload or capacity (a deletion, a cordon): such an
    #: action needs an event verified against the cluster, unless its table rule says
    #: `allow_unverified: true`. Marking (a label) is not destructive.
    destructive: ClassVar[bool] = False
    #: How the action is reversed, said for people (`undo` does it); None: it cannot be.
    reversal: ClassVar[str | None] = None
    #: True when the action only reads the cluster: the pod read before the plan is still
    #: the pod after it (Incident.pod).
    read_only: ClassVar[bool] = False

    def __init__(self, api: ApiClient, request_timeout: float = 10.0,
                 services: Services | None = None):
        self.api = api
        self.core = CoreV1Api(api)
        self.timeout = request_timeout
        self.services = services or Services()

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        raise NotImplementedError

    def attempts(self, target: Target, params: Mapping[str, Any],
                 incident: Incident | None = None) -> Callable[[], Result]:
        """One call of the action as the executor retries it: every try calls what this
        returns (a new one per call). An action whose later try must know what an earlier
        one met (an answer lost to a timeout) keeps that in it; one that records the event
        (evidence) takes it from `incident`."""
        return lambda: self.run(target, params)

    def refusal(self, pod: PodFacts, params: Mapping[str, Any]) -> str | None:
        """Why this action must not touch the event's pod (read from the cluster), or None."""
        return None

    def clear(self, guard: Guard, target: Target, pod: PodFacts | None) -> Clearance:
        """The action's own limits, checked last, just before it runs."""
        return Clearance()

    def exclusive(self) -> contextlib.AbstractContextManager:
        """Held around `clear` and `run`: an action whose limit counts the cluster's state
        (cordoned nodes) must not have two threads both see room for one more."""
        return contextlib.nullcontext()

    def undo(self, target: Target, details: Mapping[str, Any]) -> Result:
        """Reverse what `run` did (only where `reversal` says how), from the `details` its
        result recorded: DONE when reversed now, ALREADY_DONE when nothing is left to
        reverse, SKIPPED with the reason when it must not be (the object changed since).
        Idempotent; API errors propagate (the caller retries and reports them)."""
        raise NotImplementedError(f"{self.name} cannot be undone")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Everything the action declares, for `responder actions` and docs/actions.md."""
        return {
            "name": cls.name, "summary": next(iter((cls.__doc__ or "").strip().splitlines()), ""),
            "acts_on": f"{cls.acts_on.kind} ({cls.acts_on.api_version})" if cls.acts_on
            else None,
            "needs": list(cls.needs),
            "params": {k: {"types": [_type_name(t) for t in p.types], "required": p.required,
                           "doc": p.doc} for k, p in cls.params.items()},
            "limits": {lim.key: {"default": lim.default, "doc": lim.doc} for lim in cls.limits},
            "destructive": cls.destructive, "object_survives": cls.object_survives,
            "reversal": cls.reversal,
            "rbac": [rbac_dict(r) for r in cls.rbac],
        }

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

    def undoable(self) -> frozenset[str]:
        """The names of the actions that declare how to undo what they did."""
        return frozenset(name for name, a in self._actions.items() if a.reversal)

    def __iter__(self):
        return iter(self._actions.values())

    def instantiate(self, api: ApiClient, request_timeout: float,
                    services: Services | None = None) -> dict[str, Action]:
        return {name: cls(api, request_timeout, services)
                for name, cls in self._actions.items()}

    def limits(self) -> list[Limit]:
        """Every limit the actions declare, once each, in registration order."""
        seen: dict[str, Limit] = {}
        for action in self:
            for limit in action.limits:
                seen.setdefault(limit.key, limit)
        return list(seen.values())


def rbac_dict(rule: Rbac) -> dict[str, Any]:
    return {"apiGroup": rule.api_group, "resource": rule.resource, "verbs": list(rule.verbs),
            "why": rule.why}


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
