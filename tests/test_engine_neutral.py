"""The core imports neither Apache Beam nor PyFlink: both engines call it, so it must load
without either. Checked in a fresh interpreter, where nothing else has imported them.

    .venv/bin/python -m pytest tests/test_engine_neutral.py -q
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLE_RULES

import orion

ENGINES = ("apache_beam", "pyflink")

PROBE = """
import json, sys
import {module}
{use}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {engines!r})))
"""


def engine_modules_after(module: str, use: str = "") -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, use=use, engines=ENGINES)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["orion.activities", "orion.rules", "orion.leadstep", "orion.profiles",
                                    "orion.seeding", "orion.sequencing", "orion.campaigns.flows"])
def test_core_module_imports_no_engine(module):
    assert engine_modules_after(module) == []


def test_loading_and_evaluating_the_samples_imports_no_engine():
    use = (
        "from orion.rules import load_rules, evaluate\n"
        "from orion.activities import parse_activity\n"
        f"rules = load_rules({str(SAMPLE_RULES)!r})\n"
        "a = parse_activity({'event_id': 'e', 'tenant': 'acme', 'lead_id': '1', 'type': 'fill_out_form',"
        " 'occurred_at': 0, 'attributes': {'form': 'Signup'}}, rules.activity_types)\n"
        "assert evaluate(rules, None, a)[1]\n"
    )
    assert engine_modules_after("orion.rules", use) == []


def test_the_probe_would_see_an_engine_import():
    # Guards the checks above: an engine imported in the probe is reported.
    assert "pyflink" in engine_modules_after("pyflink")


# The engine adapters, and what only an adapter imports: every other module is core.
ADAPTERS = ("orion.transforms", "orion.pipelines.bootstrap", "orion.pipelines.activity_graph", "orion.flink",
            "orion.runners.direct", "orion.runners.direct_metrics", "orion.runners.dataflow", "orion.runners.flink",
            "orion.runners.beam_options", "orion.runners.direct_pubsub")
# Entry points run their command when imported; what they import is checked through the
# modules they name.
ENTRY_POINTS = ("__main__",)


def core_modules() -> list[str]:
    package = Path(orion.__file__).resolve().parent
    found = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if parts[-1] in ENTRY_POINTS:
            continue
        if not any(name == adapter or name.startswith(adapter + ".") for adapter in ADAPTERS):
            found.append(name)
    return found


def test_every_module_but_the_adapters_imports_no_engine():
    modules = core_modules()
    assert "orion.leadstep" in modules and "orion.settings" in modules and len(modules) > 30
    use = "\n".join(f"import {name}" for name in modules)
    assert engine_modules_after("orion", use) == [], \
        "a core module imports an engine: " + ", ".join(m for m in modules if engine_modules_after(m))


def test_the_adapter_list_names_real_modules():
    import importlib.util

    for adapter in ADAPTERS:
        assert importlib.util.find_spec(adapter) is not None, adapter
