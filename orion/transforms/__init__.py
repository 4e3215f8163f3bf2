"""Beam PTransforms and DoFns, thin over the engine-neutral core (orion.activities,
orion.rules): they load state, call the core, store state and emit."""
