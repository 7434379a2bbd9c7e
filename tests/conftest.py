"""Shared pytest configuration: fixture plugins for the whole suite."""

pytest_plugins = ["tests.store_fixtures"]
