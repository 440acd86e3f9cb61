"""The HTTP edge: Litestar controllers, authentication, problem responses, middleware."""
