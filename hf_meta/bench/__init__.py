"""The evaluation harness beside the library: protocols, baselines, method comparison, plots and script helpers.

Shared by `recipes/` and `benchmarks/`; needs the `bench` extra (`pip install 'hf_meta[bench]'`: scikit-learn and
matplotlib, plus `setfit` for the SetFit baseline). Nothing in the core `hf_meta` package imports it.
"""
