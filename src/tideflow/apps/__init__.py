"""Reference pipelines built on the public API: the demo and templates for users."""
