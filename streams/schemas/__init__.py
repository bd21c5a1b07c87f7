"""The records of the factory's topics as JSON Schemas (draft 2020-12): its contract.

``transaction.schema.json`` and ``label.schema.json`` say what producers may send to
``transactions`` and ``labels`` (anything else goes to the dead-letter topic with the
reason); ``score.schema.json`` says what consumers of ``scores`` get. The field ``v`` is
the schema version: a record of another version is refused, never guessed at. Tests
validate the records the workers and the replay really write against these files.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TOPIC_SCHEMAS = {"transactions": "transaction", "labels": "label", "scores": "score"}


@cache
def load(name: str) -> dict[str, Any]:
    """The schema ``name`` (``transaction``, ``label`` or ``score``) as a dict."""
    return json.loads((HERE / f"{name}.schema.json").read_text())
