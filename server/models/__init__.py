"""Loading configured models and looking them up by id."""
