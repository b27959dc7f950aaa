"""The README's quick start runs exactly as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick_start():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the quick start is one python block"
    return blocks[0]


def test_quick_start_runs_as_written(tmp_path):
    script = tmp_path / "quick_start.py"
    script.write_text(_quick_start(), encoding="utf-8")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "conv topography S =" in done.stdout
    assert (tmp_path / "maps").is_dir() and any((tmp_path / "logs").rglob("*tfevents*"))
    assert done.stdout.strip().splitlines()[-1] == "(1, 15, 40)"


def test_the_pip_demo_commands_sit_beside_make_demo_and_use_real_options():
    from keras_topomap.demo import build_parser

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(keras-topomap demo\b[^#\n]*)", section, flags=re.M)
    assert "make demo" in section and "keras-topomap demo" in [c.strip() for c in commands]
    assert "keras-topomap demo --pretrained" in [c.strip() for c in commands]
    options = {o for action in build_parser()._actions for o in action.option_strings}
    used = {word for c in commands for word in c.split() if word.startswith("--")}
    assert used and used <= options, used - options


def test_layout_table_names_every_module_and_only_real_paths():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set()
    for row in re.findall(r"^\| (.+?) \|", section, flags=re.M)[1:]:
        paths = re.findall(r"`([^`]+)`", row)
        first = paths[0].rstrip("/")
        folder = first.rsplit("/", 1)[0] + "/" if "/" in first else ""
        for path in paths:
            full = path if "/" in path.rstrip("/") or not path.endswith(".py") else folder + path
            named.add(full)
            assert (ROOT / full).exists(), f"the layout table names {full}, which is not there"
    modules = {f"keras_topomap/{p.name}" for p in (ROOT / "keras_topomap").glob("*.py")
               if p.name != "__init__.py"}
    assert not sorted(modules - named), "modules missing from README's layout table"
    folders = {f"keras_topomap/{p.name}/" for p in (ROOT / "keras_topomap").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert not sorted(folders - named)
