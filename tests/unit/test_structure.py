"""tools/check_structure.py: the package has no import circle, no cross-module private read and no file over
450 lines; and the checker finds each of those in a small package made to have them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
while not (ROOT / "tools" / "check_structure.py").exists():  # tests/ may sit one folder deeper
    ROOT = ROOT.parent
CHECKER = ROOT / "tools" / "check_structure.py"


def check(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECKER), str(package)], capture_output=True, text=True, timeout=60)


def test_the_package_is_clean() -> None:
    result = check(ROOT / "aiowhisper_npu")
    assert result.returncode == 0, result.stdout


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_lazy_import_circle_is_found(tmp_path: Path) -> None:
    pkg = write(tmp_path / "pkg", {"__init__.py": "", "a.py": "from . import b\n",
                                   "b.py": "def f():\n    from .a import x\n    return x\n"})
    result = check(pkg)
    assert result.returncode == 1 and "import circle: pkg.a" in result.stdout, result.stdout


def test_a_sub_package_circle_is_found(tmp_path: Path) -> None:
    pkg = write(tmp_path / "pkg", {"__init__.py": "", "low/__init__.py": "", "high/__init__.py": "",
                                   "low/x.py": "from ..high.y import Y\n", "high/y.py": "Y = 1\n",
                                   "high/z.py": "from ..low.w import W\n", "low/w.py": "W = 2\n"})
    result = check(pkg)
    assert result.returncode == 1 and "sub-package circle among pkg.high, pkg.low" in result.stdout, result.stdout


def test_private_reads_are_found(tmp_path: Path) -> None:
    pkg = write(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": "_hidden = 1\n\n\nclass A:\n    def __init__(self):\n        self._field = 2\n",
        "b.py": "from .a import _hidden\n",
        "c.py": "from . import a\n\n\ndef f(obj):\n    return a._hidden, obj._field\n",
        "d.py": "class D:\n    def __init__(self):\n        self._own = 1\n\n    def same(self, other):\n"
                "        return other._own, self.__class__\n",
    })
    out = check(pkg).stdout
    assert "b.py:1: imports the private name _hidden of pkg.a" in out
    assert "c.py:5: reads pkg.a._hidden" in out and "c.py:5: reads the private field obj._field" in out
    assert "d.py" not in out  # a class reading its own kind's fields, and dunders, are fine


def test_a_long_file_is_found(tmp_path: Path) -> None:
    pkg = write(tmp_path / "pkg", {"__init__.py": "", "long.py": "x = 1\n" * 451, "ok.py": "x = 1\n" * 450})
    out = check(pkg).stdout
    assert "long.py: 451 lines" in out and "ok.py" not in out
