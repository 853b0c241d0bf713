"""Analysis of a results store: theory, scaling-law fits, plots and the report."""
