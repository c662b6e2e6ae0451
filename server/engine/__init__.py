"""The generation engine: owns the model, knows nothing of HTTP or the OpenAI wire format."""
