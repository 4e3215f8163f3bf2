"""Orion: customer activity in, trigger rules evaluated per lead, campaigns out.

The core (activities, rules) is plain Python with no engine imports; pipelines/,
transforms/ and runners/ put it on Apache Beam and Apache Flink.

    orion --help
"""
__version__ = "0.1.0"
