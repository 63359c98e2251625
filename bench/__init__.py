"""Benchmarks (`make bench`, `make fullsize`, `make resource-fit`), run as scripts.

A package so one script can import another (`bench.calibrate.update_doc`).
"""
