"""Images, audio and files in requests: fetched safely, decoded, checked against the limits."""
