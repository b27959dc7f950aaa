"""What a pip user gets: licence and metadata, a small core wheel, the corpus as its own wheel."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from keras_topomap.bundled_data import CORPUS_INSTALL, CorpusNotInstalledError, bundled_data_dir
from keras_topomap.datasets import load_tts_corpus, tts_corpus_dir

ROOT = Path(__file__).resolve().parents[1]
CORPUS_PROJECT = ROOT / "keras-topomap-corpus"


def _pyproject(folder):
    with open(folder / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _build_wheel(source, out):
    """Build a wheel of ``source`` with the installed setuptools; returns (wheel path, stderr)."""
    code = (
        "import sys; from setuptools import build_meta as b; "
        "print(b.build_wheel(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # setuptools' own warnings are classes (SetuptoolsDeprecationWarning, BuildBackendWarning...);
    # "warning: byte-compiling is disabled" is distutils noise when PYTHONDONTWRITEBYTECODE is set
    warnings = re.findall(r"\w+Warning\b.*", done.stderr)
    return out / done.stdout.strip().splitlines()[-1], warnings


def test_license_and_urls():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    for folder in (ROOT, CORPUS_PROJECT):
        project = _pyproject(folder)["project"]
        assert project["license"] == "MIT"  # SPDX expression, not the deprecated table
        assert project["license-files"] == ["LICENSE"]
        assert (folder / "LICENSE").read_text() == text
        assert {"Repository", "Issues"} <= set(project["urls"])


def test_corpus_extra_pins_the_corpus_distribution():
    core = _pyproject(ROOT)["project"]
    corpus = _pyproject(CORPUS_PROJECT)["project"]
    pin = f"{corpus['name']}=={corpus['version']}"
    assert core["optional-dependencies"]["corpus"] == [pin]
    assert "corpus" in core["optional-dependencies"]["all"][0]
    assert CORPUS_INSTALL == 'pip install "keras-topomap[corpus]"'


def test_core_wheel_is_small_and_builds_without_warnings(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(
        ROOT / "keras_topomap", source / "keras_topomap",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    wheel, warnings = _build_wheel(source, tmp_path)
    assert warnings == []
    assert wheel.stat().st_size <= 1_000_000
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith("dist-info/METADATA"))).decode()
    assert not [n for n in names if n.endswith((".ogg", ".jsonl", ".keras"))]
    assert not [n for n in names if n.startswith("keras_topomap_corpus")]
    assert "License-Expression: MIT" in metadata
    assert "Provides-Extra: corpus" in metadata
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_corpus_wheel_holds_every_data_file(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(
        CORPUS_PROJECT, source,
        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"),
    )
    wheel, warnings = _build_wheel(source, tmp_path)
    assert warnings == []
    package = CORPUS_PROJECT / "keras_topomap_corpus"
    expected = {
        p.relative_to(CORPUS_PROJECT).as_posix()
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert expected - names == set()
    assert "keras_topomap_corpus/tts_corpus/utterances.jsonl" in names
    assert "keras_topomap_corpus/pretrained/README.md" in names


def test_bundled_corpus_is_found_through_the_data_package():
    import keras_topomap_corpus

    assert tts_corpus_dir() == keras_topomap_corpus.data_dir() / "tts_corpus"
    assert (tts_corpus_dir() / "utterances.jsonl").is_file()


def test_missing_corpus_raises_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_topomap_corpus", None)  # import now fails
    with pytest.raises(CorpusNotInstalledError, match="keras-topomap-corpus") as info:
        load_tts_corpus("train")
    assert CORPUS_INSTALL in str(info.value)
    assert isinstance(info.value, ImportError)
    with pytest.raises(CorpusNotInstalledError, match="pretrained"):
        bundled_data_dir("pretrained")
