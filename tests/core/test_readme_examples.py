"""The README's Python example does what its comments say, on bad input too (issue 11, defect 9)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.live_server import LiveServer

README = Path(__file__).resolve().parents[2] / "README.md"


def _inference_example() -> str:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    (block,) = [b for b in blocks if "upload_inference_result(" in b]
    return block


def test_the_inference_example_handles_bad_input_as_its_comments_say(
    live_server: LiveServer, client_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_env(live_server)
    annotation = live_server.new_annotation("readme example")
    example = _inference_example()
    assert "annotation_id=12," in example
    code = compile(example.replace("annotation_id=12,", f"annotation_id={annotation},"), "README.md", "exec")
    # A label map that is fine, checked against a series folder that does not exist on this machine:
    # bad input, so nothing is sent and the example reports it instead of raising.
    exec(code, {"label_maps": [np.zeros((8, 8), dtype=np.uint8)]})  # noqa: S102 - the README's own code
    out = capsys.readouterr().out
    assert out.startswith("not uploaded: 1 problem(s)")
    assert "/data/ct/0042 does not exist" in out
    with live_server.api() as api:
        assert api.list_groups(annotation) == []  # nothing was sent
