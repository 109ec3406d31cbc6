"""Shim for tools that still run ``python setup.py develop`` (as OpenPCDet's own install does).

All metadata lives in ``pyproject.toml``; ``pip install -e ".[cpu,dev]"`` is the preferred install.
"""
from setuptools import setup

setup()
