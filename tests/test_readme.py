"""The README stays true: its links land on headings, and its reference names every setting."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from forwarder.config.settings import Settings
from forwarder.destinations.nats.options import NatsForwarderConfig
from forwarder.destinations.webhook.options import WebhookForwarderConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def anchors(text: str) -> set[str]:
    """GitHub's anchors for every heading outside code blocks."""
    found: set[str] = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def aliases(model: type[BaseModel]) -> set[str]:
    """The YAML names of a model's fields."""
    return {field.alias or name for name, field in model.model_fields.items()}


def test_every_internal_link_lands_on_a_heading() -> None:
    """Each ``](#anchor)`` in the README names a heading that exists."""
    text = README.read_text()
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "the README links to its own sections"
    assert links - anchors(text) == set()


def section(name: str) -> type[BaseModel]:
    """The model of the top-level section ``name``."""
    model = Settings.model_fields[name].annotation
    assert isinstance(model, type)
    assert issubclass(model, BaseModel)
    return model


def test_the_configuration_reference_names_every_setting() -> None:
    """Every top-level, ingest, buffer, delivery, webhook and NATS key is in the README."""
    text = README.read_text()
    keys = aliases(Settings) | aliases(WebhookForwarderConfig) | aliases(NatsForwarderConfig)
    for name in ("ingest", "buffer", "delivery", "metrics", "logging"):
        keys |= aliases(section(name))
    missing = sorted(key for key in keys if f"{key}" not in text)
    assert missing == []
