"""The rule language: YAML schema, loader with line numbers, compiler, trigger index and
the per-lead evaluator. Imports neither Beam nor Flink: both engines call it.

    orion rules validate orion/samples/rules
"""
from orion.rules.compiler import check_rules, load_rules, load_serving_rules
from orion.rules.evaluator import apply_activity, evaluate, evaluate_lead
from orion.rules.index import RuleSet, TenantRules
from orion.rules.model import EMPTY_LEAD_STATE, Campaign, LeadState, Outcome
from orion.rules.source import RuleError, RuleErrors

__all__ = [
    "EMPTY_LEAD_STATE", "Campaign", "LeadState", "Outcome", "RuleError", "RuleErrors",
    "RuleSet", "TenantRules", "apply_activity", "check_rules", "evaluate", "evaluate_lead",
    "load_rules", "load_serving_rules",
]
