"""HTTP surface: wire schemas, routes, errors, SSE framing."""
