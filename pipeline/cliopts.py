"""Command-line option types shared by the ``nnsweep`` commands."""

from __future__ import annotations

import json
import math
from typing import Any

import click


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf, numpy's too) replaced by None.

    >>> finite_or_none({"a": float("nan"), "b": [1.5, float("inf")], "c": (2, None)})
    {'a': None, 'b': [1.5, None], 'c': [2, None]}
    """
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """Strict JSON (RFC 8259): non-finite numbers become null, never NaN or Infinity."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


class _KeyValue(click.ParamType):
    """KEY=VALUE, the value read as YAML (so numbers, booleans and {a: b} work)."""

    name = "KEY=VALUE"

    def convert(self, value, param, ctx):
        import yaml

        key, sep, raw = value.partition("=")
        if not sep or not key:
            self.fail(f"{value!r} is not allowed; expected KEY=VALUE, e.g. endpoint_url=http://127.0.0.1:9000.",
                      param, ctx)
        try:
            return key, yaml.safe_load(raw)
        except yaml.YAMLError:
            return key, raw


storage_option = click.option(
    "--storage-option", "storage_options", type=_KeyValue(), multiple=True,
    help="fsspec option for a store URL (s3://...), repeatable: --storage-option endpoint_url=http://...")
