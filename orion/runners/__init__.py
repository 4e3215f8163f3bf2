"""How a graph is launched: the Beam DirectRunner, Dataflow, and a PyFlink job that
calls the same core functions."""
