"""mlm_pretraining/files.py: a file replaced whole, no temporary left behind."""

from __future__ import annotations

from mlm_pretraining.files import write_text_atomically


def test_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    assert write_text_atomically(path, '{"position": "ü"}') == path
    assert path.read_text(encoding="utf-8") == '{"position": "ü"}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
