"""The store fixtures live in tests/conftest.py (the API tests use them too)."""
