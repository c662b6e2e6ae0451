"""Request orchestration between the wire and the engine; imports no web framework."""
