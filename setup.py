"""Kept for Beam's `--setup_file`, with which Dataflow workers install Orion from this
checkout: everything about the distribution is in pyproject.toml (PEP 621).

    pip install -e '.[flink,collector,test]'    # then: orion --help
"""
from setuptools import setup

setup()
