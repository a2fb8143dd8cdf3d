import subprocess
import sys
from pathlib import Path

import pytest

from service.tag_lists import TagListsNotFound, find_tag_list_dir, load_tag_index


REPO_ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)


def test_finds_kgen_tag_lists_without_importing_kgen():
    directory = find_tag_list_dir()
    assert directory.name == "tag-list"
    assert (directory / "artist.txt").is_file()
    # In a fresh interpreter: loading the index imports neither kgen nor torch.
    done = run_python(
        "import sys; from service.tag_lists import load_tag_index; load_tag_index(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kgen', 'torch')))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_load_tag_index_strips_crlf(tmp_path):
    (tmp_path / "artist.txt").write_bytes(b"b artist\r\na artist\r\n")
    (tmp_path / "characters.txt").write_bytes(b"hatsune miku\r\n")
    (tmp_path / "copyrights.txt").write_bytes(b"vocaloid\r\n")
    (tmp_path / "meta.txt").write_bytes(b"highres\r\n")
    index = load_tag_index(tmp_path)
    assert index.category("a artist") == "artist"
    assert index.category("hatsune miku") == "characters"
    assert index.category("highres") == "meta"
    assert index.category("highres\r") is None
    assert index.sizes()["artist"] == 2


def test_missing_list_file_is_a_clear_error(tmp_path):
    (tmp_path / "artist.txt").write_bytes(b"x\r\n")
    with pytest.raises(TagListsNotFound, match="copyrights.txt"):
        load_tag_index(tmp_path)


def test_kgen_not_installed_is_a_clear_error():
    # `-S`: no site-packages, so tipo-kgen is really absent (the service package needs only the stdlib).
    done = run_python("from service.tag_lists import load_tag_index; load_tag_index()", "-S")
    assert done.returncode != 0
    assert "TagListsNotFound: tipo-kgen is not installed" in done.stderr


def test_real_lists_load():
    index = load_tag_index()
    assert index.sizes()["artist"] == 580988
    assert index.category("vocaloid") == "copyrights"
