"""mlm_pretraining/files.py: a file replaced whole, no temporary left behind."""

from __future__ import annotations

from mlm_pretraining.files import write_bytes_atomically, write_text_atomically


def test_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    assert write_text_atomically(path, '{"position": "ü"}') == path
    assert path.read_text(encoding="utf-8") == '{"position": "ü"}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_bytes_replace_the_file_whole_and_leave_no_temporary(tmp_path):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old drawing")
    assert write_bytes_atomically(path, b"\x89PNG new") == path
    assert path.read_bytes() == b"\x89PNG new"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
