"""Analysis of a results store: theory, scaling-law fits, plots and the report.

- :mod:`.theory`: what theory predicts (no store needed);
- :mod:`.fit`: per-network summaries of a store and the fits, with bootstrap intervals;
- :mod:`.report`: PNG plots and index.md (imports matplotlib, so it is not imported here);
- :mod:`.commands`: the ``nnsweep fit`` and ``nnsweep report`` click commands.
"""
