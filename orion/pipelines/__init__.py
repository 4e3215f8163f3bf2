"""Graph assembly: each pipeline is a function that builds a Beam graph from the
transforms in orion.transforms, with sources and sinks passed in."""
