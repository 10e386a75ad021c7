"""Event time: watermark strategies (and, later, window assigners and triggers)."""

from .watermarks import BoundedOutOfOrder, Monotonic, WatermarkStrategy

__all__ = ["BoundedOutOfOrder", "Monotonic", "WatermarkStrategy"]
