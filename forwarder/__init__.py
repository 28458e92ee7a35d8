"""audit-forwarder: durable forwarding of local audit events to webhook endpoints."""

from __future__ import annotations

__version__ = "1.0.0"
