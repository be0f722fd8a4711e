"""The response actions and the registry that names them.

Adding an action: one module here with an `Action` subclass declaring its name, needs,
params, the object it acts on, its RBAC (each verb with why), its limits, `refusal`/`clear`
where it has its own checks, and `reversal`/`undo`; one line in BUILTIN_ACTIONS; its tests.
Then `responder actions --markdown > docs/actions.md`, and grant any new verb in
manifests/rbac.yaml (tests fail until both match the declarations)."""

from .base import (
    Action,
    Clearance,
    Guard,
    Incident,
    Kind,
    Limit,
    Limits,
    ObjectRef,
    Outcome,
    Param,
    PodFacts,
    Rbac,
    Registry,
    Result,
    Services,
    Target,
    api_failure,
    object_ref,
    rbac_dict,
)
from .evidence import CaptureEvidence
from .isolation import IsolatePod
from .nodes import CordonNode
from .pods import DeletePod, LabelPod

#: Adding an action: its module here, and one line in this tuple.
BUILTIN_ACTIONS = (DeletePod, LabelPod, CordonNode, IsolatePod, CaptureEvidence)


def default_registry() -> Registry:
    """A new registry holding the built-in actions."""
    return Registry(BUILTIN_ACTIONS)


__all__ = [
    "Action", "Clearance", "Guard", "Incident", "Kind", "Limit", "Limits", "ObjectRef",
    "Outcome", "Param", "PodFacts", "Rbac", "rbac_dict", "Registry", "Result", "Services",
    "Target",
    "api_failure", "object_ref",
    "CaptureEvidence", "CordonNode", "DeletePod", "IsolatePod", "LabelPod", "BUILTIN_ACTIONS",
    "default_registry",
]
