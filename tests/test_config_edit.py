"""One editor of plumb.toml (core.workspace.set_config) for `plumb models add --use` and the TUI's constitution."""

from __future__ import annotations

import tomllib

import pytest

from plumb.core.errors import PlumbError
from plumb.core.workspace import set_config

TOML = '''# my workspace
constitution = "concise-writer"  # the default

[models]
# what samples and serves
generate = "starter"
train = "starter"

[training]
lr = 0.0001
'''


def test_set_config_keeps_the_file_and_edits_only_the_keys(tmp_path):
    (tmp_path / "plumb.toml").write_text(TOML)
    set_config(tmp_path, {"constitution": "mine.toml"})
    set_config(tmp_path, {"generate": 'llamacpp:my "model".gguf', "train": "hf:copy"}, "models")
    set_config(tmp_path, {"name": "x"}, "new")
    text = (tmp_path / "plumb.toml").read_text()
    assert "# my workspace" in text and "# what samples and serves" in text and "lr = 0.0001" in text
    parsed = tomllib.loads(text)
    assert parsed["constitution"] == "mine.toml" and parsed["training"] == {"lr": 0.0001}
    assert parsed["models"] == {"generate": 'llamacpp:my "model".gguf', "train": "hf:copy"}
    assert parsed["new"] == {"name": "x"}


def test_set_config_refuses_what_it_cannot_edit_safely(tmp_path):
    (tmp_path / "plumb.toml").write_text('[models]\ngenerate = """\nstarter\n"""\n')  # a multi-line string
    before = (tmp_path / "plumb.toml").read_text()
    with pytest.raises(PlumbError, match="by hand"):
        set_config(tmp_path, {"generate": "other"}, "models")
    assert (tmp_path / "plumb.toml").read_text() == before
