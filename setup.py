"""Orion: streaming marketing activity, trigger rules and campaigns on Apache Beam and Flink.

    pip install -e '.[test]'    # then: orion --help
"""
from setuptools import find_packages, setup

setup(
    name="orion",
    version="0.1.0",
    description="Marketing activity streaming: trigger rules, lead history, campaigns.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["orion", "orion.*"]),
    package_data={
        "orion": ["samples/*.jsonl", "samples/rules/*.yaml"],
        "orion.templates": ["*.j2"],
    },
    install_requires=[
        # apache-flink 2.3.0 caps Beam at <= 2.61; both must live in one environment.
        "apache-beam[gcp]==2.61.0",
        "apache-flink==2.3.0",
        "pymysql>=1.1,<2",
        "jinja2>=3.1,<4",
        "PyYAML>=6.0,<7",
        "jsonschema>=4.20,<5",
        # orion collect: the HTTP intake (server; its client drives the load benchmark)
        "aiohttp>=3.9,<4",
        "prometheus-client>=0.20,<1",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "hypothesis>=6.100,<7", "aiosmtpd>=1.4,<2"],
    },
    entry_points={"console_scripts": ["orion=orion.cli:main"]},
)
