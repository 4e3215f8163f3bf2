"""Campaign processing, engine-neutral (no Beam or Flink imports): flow execution per
lead (`flows`), choices (`choices`), email assembly (`email`), the outbox (`outbox`), the
SMTP send path (`send`) and batch campaigns (`batch`). The Beam adapters are in
orion/transforms/flows.py.

    orion campaign run --tenant acme --campaign "Monthly newsletter" --leads mysql://... --outbox URI
    orion send --outbox URI --smtp HOST:PORT
"""
from orion.campaigns.flows import (
    DEFAULT_MAX_CASCADE_DEPTH,
    EmailRequest,
    FlowEngine,
    FlowResult,
    HeldEmail,
    LeadFlows,
    RunningFlow,
    WebhookCall,
)

__all__ = [
    "DEFAULT_MAX_CASCADE_DEPTH", "EmailRequest", "FlowEngine", "FlowResult", "HeldEmail", "LeadFlows",
    "RunningFlow", "WebhookCall",
]
