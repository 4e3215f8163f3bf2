"""Orion's PyFlink functions: the Flink adapters over the engine-neutral core (intake,
sequencing, rules, store). The job that wires them is `orion.runners.flink`.

    .venv/bin/python -m orion.runners.flink --events orion/samples/events.jsonl
"""
