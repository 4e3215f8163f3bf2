"""Real-time decisions: `POST /v1/decide` answers, for a lead and the placements of a
page, which experience it sees, in which variant, with what content, from the lead's
durable profile (the one the graph writes) and the request's context. Each decision is
recorded as an `experience_impression` activity through the normal intake, and
`orion analytics experiments` reports impressions, conversions and lift over control.
See docs/decisions.md.

    orion decide serve --port 8081 --keys orion-data/collector-keys.yaml --topic projects/P/topics/T

Modules: `core` (the decision itself: audiences, sticky assignment, content; pure),
`leads` (the lead's profile and history counts, cached briefly), `settings`
(the service's settings and defaults), `app` (the aiohttp routes and impressions),
`experiments` (the report), `commands` (the command line). Experiences are written and
checked with the rules (orion/rules: schema, compiler, model).
"""
