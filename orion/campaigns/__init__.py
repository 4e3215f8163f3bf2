"""Campaign processing, engine-neutral (no Beam or Flink imports): flow execution per
lead (`flows`), choices (`choices`), email assembly (`email`), the outbox (`outbox`), the
SMTP send path (`send`) and batch campaigns (`batch`). The Beam adapters are in
orion/transforms/flows.py.

    orion campaign run --tenant acme --campaign "Monthly newsletter" --leads mysql://... --outbox URI
    orion send --outbox URI --store URI --smtp HOST:PORT
"""
__all__ = [
    "DEFAULT_MAX_CASCADE_DEPTH", "EmailRequest", "FlowEngine", "FlowResult", "HeldEmail", "LeadFlows",
    "RunningFlow", "WebhookCall",
]


def __getattr__(name: str):
    # The flow names are loaded from orion.campaigns.flows when first asked for: that
    # module compiles nothing but imports the rules' compiler (Jinja2, jsonschema, RE2),
    # which the send and campaign commands, and every command's parser, do not need.
    if name in __all__:
        from orion.campaigns import flows

        return getattr(flows, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
