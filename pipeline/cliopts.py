"""Command-line option types shared by the ``nnsweep`` commands."""

from __future__ import annotations

import click


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
