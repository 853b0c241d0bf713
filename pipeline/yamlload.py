"""The YAML reader of spec and cluster files: PyYAML's SafeLoader with two fixes.

- Numbers written the way everyone writes them are numbers: YAML 1.1 (what
  PyYAML implements) reads ``1e-3`` and ``2E5`` as strings, YAML 1.2 as
  floats. The 1.2 float syntax is added after PyYAML's own rules, so every
  value PyYAML already read as a number, boolean or null is unchanged.
- A key given twice in one mapping is an error instead of silently keeping
  the last value.

>>> load("ratio: [1e-3, 2E5, 0.1, 7]")
{'ratio': [0.001, 200000.0, 0.1, 7]}
>>> try:
...     load("a: 1\\na: 2")
... except yaml.YAMLError as e:
...     print(e.problem)
found the key 'a' a second time (first at line 1)
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# YAML 1.2 core schema floats (decimal or exponent form); 1.1's own rules come first.
_FLOAT_12 = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")


class Loader(yaml.SafeLoader):
    """SafeLoader that reads YAML 1.2 floats and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' merges may repeat keys on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", None,
                    f"found the key {key!r} a second time (first at line {first.start_mark.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+.0123456789"))


def load(text: str) -> Any:
    """Parse YAML text with :class:`Loader` (safe: plain data only).

    Raises:
        yaml.YAMLError: the text is not YAML, or a mapping repeats a key.
    """
    return yaml.load(text, Loader=Loader)  # noqa: S506 (Loader is a SafeLoader)
