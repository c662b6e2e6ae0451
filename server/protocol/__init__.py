"""The OpenAI wire protocol as this server takes it: request and stored-completion schemas, request
limits, and the errors that become OpenAI error objects. Below every other layer but config."""
