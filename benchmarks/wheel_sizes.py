"""Size of the two wheels built from this repository: keras-topomap and keras-topomap-corpus.

Builds each in a temporary copy of its source (so the checkout gets no build/ folder) with the
installed setuptools, and prints a markdown table of wheel size, file count and unpacked size.

    python benchmarks/wheel_sizes.py
"""

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")


def build(project_dir, files, out):
    """Copy ``files`` of ``project_dir`` into a fresh folder and build a wheel into ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for name in files:
            path = project_dir / name
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=IGNORE)
            else:
                shutil.copy(path, source / name)
        code = "import sys; from setuptools import build_meta as b; "
        code += "print(b.build_wheel(sys.argv[1]))"
        done = subprocess.run(
            [sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True,
            check=True,
        )
        return out / done.stdout.strip().splitlines()[-1]


def main():
    with tempfile.TemporaryDirectory() as out:
        out = Path(out)
        wheels = [
            build(ROOT, ["pyproject.toml", "README.md", "LICENSE", "keras_topomap"], out),
            build(ROOT / "keras-topomap-corpus", ["pyproject.toml", "README.md", "LICENSE",
                                                  "keras_topomap_corpus"], out),
        ]
        print("| wheel | size | files | unpacked |")
        print("|---|---|---|---|")
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                infos = z.infolist()
            unpacked = sum(i.file_size for i in infos)
            print(f"| `{wheel.name}` | {wheel.stat().st_size / 1e6:.2f} MB | {len(infos)} | "
                  f"{unpacked / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
