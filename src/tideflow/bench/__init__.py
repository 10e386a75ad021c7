"""Benchmarks that ship with tideflow (``tideflow bench ...``): NEXMark and inference.

Each prints a table, or one JSON object with ``--json``; figures are medians of repeated runs.
"""
