"""Falcon resources: HTTP only. Each responder parses and validates the request,
calls one store method (service/queries), and shapes the response."""
