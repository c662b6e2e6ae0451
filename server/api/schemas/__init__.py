"""Wire models. Responses reuse the official `openai` package's types so they cannot drift."""
