"""response_format / tool_choice -> grammar -> a per-step allowed-token mask (llguidance)."""
