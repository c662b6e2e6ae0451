"""Tool-call output formats: one parser per format, each with the grammar of its call envelope."""
