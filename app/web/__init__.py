"""The HTTP edge: errors, request bodies and auth, rate limit, OpenAPI, JSON."""
