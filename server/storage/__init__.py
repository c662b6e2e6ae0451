"""Stored completions (`store: true`): the CompletionStore and its SQL implementation."""
