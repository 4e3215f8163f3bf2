"""The rule language: YAML schema, loader with line numbers, compiler, trigger index and
the per-lead evaluator. Imports neither Beam nor Flink: both engines call it.

    orion rules validate orion/samples/rules
"""
# Each name comes from its module when first asked for (PEP 562): the compiler imports
# Jinja2, jsonschema and RE2, which a module that needs only the model (LeadState, a
# command's parser) should not pay for.
_HOMES = {
    "check_rules": "compiler", "load_rules": "compiler", "load_serving_rules": "compiler",
    "apply_activity": "evaluator", "evaluate": "evaluator", "evaluate_lead": "evaluator",
    "RuleSet": "index", "TenantRules": "index",
    "EMPTY_LEAD_STATE": "model", "Campaign": "model", "LeadState": "model", "Outcome": "model",
    "RuleError": "source", "RuleErrors": "source",
}

__all__ = [
    "EMPTY_LEAD_STATE", "Campaign", "LeadState", "Outcome", "RuleError", "RuleErrors",
    "RuleSet", "TenantRules", "apply_activity", "check_rules", "evaluate", "evaluate_lead",
    "load_rules", "load_serving_rules",
]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value
