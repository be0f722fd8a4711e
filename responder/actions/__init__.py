"""The response actions and the registry that names them."""

from .base import (
    Action,
    ObjectRef,
    Outcome,
    Param,
    Rbac,
    Registry,
    Result,
    Target,
    api_failure,
    object_ref,
)
from .nodes import CordonNode
from .pods import DeletePod, LabelPod

BUILTIN_ACTIONS = (DeletePod, LabelPod, CordonNode)


def default_registry() -> Registry:
    """A new registry holding the built-in actions."""
    return Registry(BUILTIN_ACTIONS)


__all__ = [
    "Action", "ObjectRef", "object_ref", "Outcome", "Param", "Rbac", "Registry", "Result",
    "Target", "api_failure",
    "CordonNode", "DeletePod", "LabelPod", "BUILTIN_ACTIONS", "default_registry",
]
