"""The configs the guides show are real: every YAML block of docs/getting-started.md and
docs/migrating.md that is a bridge config (a mapping with ``triggers``) validates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bridge.config import parse_config

DOCS = Path(__file__).resolve().parents[2] / "docs"
GUIDES = ("getting-started.md", "migrating.md")


def configs() -> list[tuple[str, str]]:
    found = []
    for name in GUIDES:
        text = (DOCS / name).read_text()
        for number, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.S), 1):
            documents = list(yaml.safe_load_all(block))
            if any(isinstance(d, dict) and "triggers" in d for d in documents):
                found.append((f"{name} yaml block {number}", block))
    return found


def test_the_guides_show_configs() -> None:
    names = [name for name, _ in configs()]
    assert sum(n.startswith("getting-started") for n in names) == 1
    assert sum(n.startswith("migrating") for n in names) == 6


@pytest.mark.parametrize(("where", "block"), configs(), ids=[name for name, _ in configs()])
def test_every_config_in_the_guides_validates(where: str, block: str) -> None:
    parse_config(block, env={"OPENFAAS_AUTH": "YWRtaW46c2VjcmV0"})
