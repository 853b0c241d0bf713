"""Analysis of a results store: theory, scaling-law fits, plots and the report.

Layers, bottom-up (each module imports only those above it in this list):

- :mod:`.theory`, :mod:`.intervals`: what theory predicts, confidence intervals (no store needed);
- :mod:`.recorded`: what a store's recorded spec says about its networks (given, one per cell, ReLU);
- :mod:`.summaries`: open a store once and read it through the integrity check; per-unit summaries;
- :mod:`.fit`: the models and the bootstrap; :mod:`.fittext`: the fit as text;
- :mod:`.plotting`: what every plot shares (imports matplotlib, so it is not imported here);
- :mod:`.figures`, :mod:`.linear`, :mod:`.given`, :mod:`.controlvariate`: the report's plots and sections;
- :mod:`.report`: index.md; :mod:`.commands`: the ``nnsweep fit`` and ``nnsweep report`` commands.
"""
