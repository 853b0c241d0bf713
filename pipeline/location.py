"""Where a store lives: a local path or an fsspec URL, and the filesystem that reaches it.

The bottom of the storage layer: :mod:`pipeline.lock`, :mod:`pipeline.store`
and :mod:`pipeline.verify` all receive a :class:`StoreLocation`, and none of
them needs another to make one.

>>> str(as_location("results/x.zarr")), as_location("s3://b/x.zarr", {"anon": True}).options
('results/x.zarr', {'anon': True})
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .errors import StoreError


@dataclasses.dataclass(frozen=True)
class StoreLocation:
    """A local path or an fsspec URL (s3://, gs://, ...) and its options.

    This is the one place that turns what the user typed into something zarr,
    xarray and fsspec open; tasks receive it (it is small and picklable).
    """

    url: str
    storage_options: tuple[tuple[str, Any], ...] = ()

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.storage_options)

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def zarr_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for zarr / xarray: storage options only for URLs."""
        return {} if self.is_local else {"storage_options": self.options}

    def filesystem(self):
        """The fsspec filesystem of the store and the store's root path in it.

        >>> fs, root = as_location("/tmp/x.zarr").filesystem()
        >>> root, fs.protocol[0]
        ('/tmp/x.zarr', 'file')
        """
        import fsspec

        return fsspec.core.url_to_fs(self.url, **self.options)

    def __str__(self) -> str:
        return self.url


def as_location(where: str | os.PathLike | StoreLocation, storage_options: dict | None = None) -> StoreLocation:
    """Accept a path, a URL or a StoreLocation at the edge; return a StoreLocation.

    Raises:
        StoreError: storage options given for a local path.
    """
    if isinstance(where, StoreLocation):
        return where
    loc = StoreLocation(os.fspath(where), tuple(sorted((storage_options or {}).items())))
    if loc.storage_options and loc.is_local:
        raise StoreError(f"storage options {loc.options} were given for the local path {loc.url!r}; they apply "
                         "only to fsspec URLs such as s3://bucket/store.zarr.")
    return loc


def short_path(text: str) -> str:
    """A path or URL cut to a readable length for messages, quoted.

    >>> short_path("a" * 200)[:8], len(short_path("a" * 200))
    ("'aaaaaaa", 105)
    """
    return repr(text) if len(text) <= 120 else repr(text[:60] + "..." + text[-40:])
