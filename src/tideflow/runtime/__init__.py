"""Runtimes that execute a Flow: the embedded local runtime (and, later, Ray)."""
