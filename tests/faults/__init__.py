"""Fault injection for the integration tests: a programmable HTTP proxy in front of real servers."""
