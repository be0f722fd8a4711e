"""Kubernetes label syntax, checked when the table is loaded rather than by the API server."""

from __future__ import annotations

import re
from typing import Any

_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_value_problem(value: Any) -> str | None:
    """Why `value` is not a valid label value, or None when it is."""
    if not isinstance(value, str):
        return "must be a string (quote values such as \"true\" or \"1\" in YAML)"
    if len(value) > 63:
        return "must be at most 63 characters"
    if not _NAME.match(value):
        return "must be alphanumeric, '-', '_' or '.', starting and ending alphanumeric"
    return None


def label_key_problem(key: Any) -> str | None:
    """Why `key` is not a valid label key ([prefix/]name), or None when it is."""
    if not isinstance(key, str) or not key:
        return "must be a non-empty string"
    prefix, _, name = key.rpartition("/")
    if "/" in key and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _NAME.match(name):
        return "name must be 1-63 alphanumeric, '-', '_' or '.' characters"
    return None


def labels_problems(labels: dict) -> list[str]:
    """Every problem with a labels mapping, one per bad key or value."""
    if not labels:
        return ["must name at least one label"]
    return label_map_problems(labels)


def label_map_problems(labels: dict, where: str = "") -> list[str]:
    """One problem per bad key or value of a (possibly empty) label mapping, each said
    after `where` (e.g. "[0].pod_selector: ")."""
    problems = []
    for key, value in labels.items():
        if problem := label_key_problem(key):
            problems.append(f"{where}key {key!r}: {problem}")
        if problem := label_value_problem(value):
            problems.append(f"{where}value of {key!r}: {problem}")
    return problems
