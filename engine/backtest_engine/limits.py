"""Limits the service and the router must agree on: a router that refuses what the engine accepts breaks
the API behind it (an upload the engine takes answered 413 by the router in front of it)."""

from __future__ import annotations

DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
"""Largest dataset upload the engine accepts (ENGINE_MAX_UPLOAD_BYTES), and the router's default body limit."""
