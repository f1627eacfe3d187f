"""Helpers, fixtures and the ASGI apps that the tests and their subprocess servers import."""
