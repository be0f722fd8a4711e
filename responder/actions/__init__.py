"""The response actions and the registry that names them."""

from .base import (
    Action,
    Clearance,
    Guard,
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
    Target,
    api_failure,
    object_ref,
    rbac_dict,
)
from .nodes import CordonNode
from .pods import DeletePod, LabelPod

#: Adding an action: its module here, and one line in this tuple.
BUILTIN_ACTIONS = (DeletePod, LabelPod, CordonNode)


def default_registry() -> Registry:
    """A new registry holding the built-in actions."""
    return Registry(BUILTIN_ACTIONS)


__all__ = [
    "Action", "Clearance", "Guard", "Kind", "Limit", "Limits", "ObjectRef", "object_ref",
    "Outcome", "Param", "PodFacts", "Rbac", "rbac_dict", "Registry", "Result", "Target",
    "api_failure",
    "CordonNode", "DeletePod", "LabelPod", "BUILTIN_ACTIONS", "default_registry",
]
