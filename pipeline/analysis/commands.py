"""The ``nnsweep fit`` and ``nnsweep report`` commands: parse options and call the analysis API.

Registered on the main group in pipeline/cli.py with ``main.add_command``; a
UserError raised here becomes a one-paragraph message and exit status 2 there.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..cliopts import dumps, storage_option
from ..errors import UserError

_bootstrap = click.option("--bootstrap", "n_boot", type=click.IntRange(min=0), default=1000, show_default=True,
                          help="Bootstrap resamples of the networks for the 95% intervals (0: no intervals).")
_seed = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of the bootstrap resampling (the fit is reproducible).")
_progress = click.option("--progress/--no-progress", default=True, show_default=True,
                         help="Show progress on stderr when reading or resampling takes a while.")


@click.command("fit")
@click.argument("store", type=str)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the JSON object to FILE, with a per-cell table of statistics and residuals.")
@_bootstrap
@_seed
@_progress
@storage_option
def fit_command(store, as_json, out, n_boot, seed, progress, storage_options):
    """Fit scaling laws of the relative output change to STORE, with 95% intervals over networks
    (over noise draws for a store of one network).

    Example: nnsweep fit results/quickstart.zarr --json
    """
    from ..store import as_location
    from .fit import fit
    from .fittext import to_text
    from .summaries import load, open_store

    results = open_store(as_location(store, dict(storage_options)))  # once, read through its integrity check
    result = fit(load(results, progress), n_boot=n_boot, seed=seed, progress=progress, with_cells=out is not None)
    result["linear_answer"] = linear_rows(results, progress)
    if out is not None:
        _write(Path(out), dumps(result, indent=2))
        result.pop("cells")
    click.echo(dumps(result, indent=2) if as_json else to_text(result))


def linear_rows(results, progress: bool = False) -> list[dict]:
    """Per (L, m, ratio, layer): Monte Carlo mean and RMS of R beside the linear answer, the worst
    direction and the bound, relative to ||v|| (see pipeline.analysis.linear), for the
    :class:`~pipeline.analysis.summaries.Results` of an opened store."""
    from . import linear

    summary = linear.linear_summary(results, progress)
    return [{"ratio": float(r), **row} for r in summary.ratio.values for row in linear.linear_table(summary, r)]


@click.command("report")
@click.argument("store", type=str)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the PNG plots and index.md (created if missing; files are overwritten).")
@_bootstrap
@_seed
@_progress
@storage_option
def report_command(store, out_dir, n_boot, seed, progress, storage_options):
    """Write plots and DIR/index.md answering the question for the settings in STORE.

    Example: nnsweep report results/quickstart.zarr --out report/
    """
    from ..store import as_location
    from .report import make_report
    from .summaries import open_store

    results = open_store(as_location(store, dict(storage_options)))  # once, read through its integrity check
    index = make_report(results, out_dir, n_boot=n_boot, seed=seed, progress=progress)
    click.echo(f"report: {index}")


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text + "\n")
    except OSError as e:
        raise UserError(f"--out {str(path)!r}: cannot write the file ({e.strerror}); "
                        "pass a file path in an existing, writable directory.") from None
