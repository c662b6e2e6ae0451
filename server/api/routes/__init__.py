"""One router per resource: parse, call a service, encode."""
