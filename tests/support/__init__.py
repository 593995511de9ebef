"""Reusable test helpers that run real services (no mocks of our own code)."""
