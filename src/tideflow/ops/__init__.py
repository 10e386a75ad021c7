"""Operator logic. Each operator transforms micro-batches; the runtime decides where it runs."""
