"""Structural checks of the package, with plain Python: ``python tools/check_structure.py [PACKAGE_DIR]``.

1. **No import circle** among the package's modules, nor among its sub-packages (``pipeline/`` and
   ``devices/`` importing each other is a circle even when no two modules do). Every ``import`` statement
   counts, wherever it stands: at module level, inside a function (a lazy import) or under
   ``if TYPE_CHECKING:``. ``from .pkg import name`` depends on ``pkg.name`` when that is a module, else on
   ``pkg`` (its ``__init__``); importing a module does not count as depending on the packages that hold it.
2. **No module reads another module's private names**: ``from mod import _name``, ``mod._name`` on an imported
   project module, and ``obj._name`` on any object but ``self``, ``cls`` or the module's own globals when no
   class of the module itself defines ``_name`` (so it is a private field of another module's class). Dunder
   names, and the underscore names of namedtuples' public API, are public. Importing a private *module* (the C
   extensions ``native._gemm``, ...) is allowed only from the package that holds it.
3. **No source file over 450 lines** (Python, C, headers, JavaScript, HTML).

Prints each violation and exits 1 if there is any; prints a one-line summary and exits 0 otherwise.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_LINES = 450
SOURCE_SUFFIXES = {".py", ".c", ".h", ".js", ".html"}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


class Package:
    """The modules of one package directory: names, paths and import edges."""

    def __init__(self, root: Path):
        self.root = root
        self.paths = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
        self.extensions = {module_name(root, p).split(".cpython")[0] for p in root.rglob("*.so")}
        self.extensions |= {module_name(root, p) for p in root.rglob("*.c")}  # built or not
        self.trees = {name: ast.parse(path.read_text(), str(path)) for name, path in self.paths.items()}

    def is_module(self, name: str) -> bool:
        return name in self.paths or name in self.extensions

    def is_package(self, name: str) -> bool:
        return name in self.paths and self.paths[name].name == "__init__.py"

    def resolve(self, importer: str, module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        base = importer.split(".")
        if not self.is_package(importer):
            base = base[:-1]
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    def imports(self, name: str) -> Iterator[tuple[ast.stmt, str, list[str]]]:
        """Each import statement of module ``name``: (node, the module it names, the names it takes)."""
        for node in ast.walk(self.trees[name]):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield node, alias.name, []
            elif isinstance(node, ast.ImportFrom):
                yield node, self.resolve(name, node.module, node.level), [a.name for a in node.names]

    def edges(self, name: str) -> Iterator[tuple[str, int]]:
        """The project modules ``name`` depends on, with the line of each import."""
        top = self.root.name
        for node, target, names in self.imports(name):
            if not (target == top or target.startswith(top + ".")):
                continue
            subs = [f"{target}.{n}" for n in names if self.is_module(f"{target}.{n}")]
            plain = [n for n in names if not self.is_module(f"{target}.{n}")]
            for sub in subs:
                if sub in self.paths:
                    yield sub, node.lineno
            if (plain or not names) and target in self.paths:
                yield target, node.lineno

    def group(self, name: str) -> str:
        """The sub-package directly below the root that holds ``name`` (a top-level module is its own)."""
        parts = name.split(".")
        return ".".join(parts[:2])

    def graph(self, grouped: bool = False) -> dict[str, list[str]]:
        key = self.group if grouped else (lambda n: n)
        graph: dict[str, set[str]] = {key(n): set() for n in self.paths}
        for n in self.paths:
            graph[key(n)].update(key(t) for t, _ in self.edges(n) if key(t) != key(n))
        return {k: sorted(v) for k, v in graph.items()}

    def cycles(self, grouped: bool = False) -> list[list[str]]:
        """Strongly connected components with more than one member: modules, or sub-packages if ``grouped``."""
        graph = self.graph(grouped)
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []
        counter = [0]

        def visit(v: str) -> None:  # Tarjan's algorithm, iterative enough for a package's depth
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on_stack.add(v)
            for w in graph[v]:
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))

        sys.setrecursionlimit(max(1000, 10 * len(graph)))
        for v in graph:
            if v not in index:
                visit(v)
        return found

    def crossing(self, a: str, b: str) -> str:
        """The first import from sub-package ``a`` into sub-package ``b``, as ``module:line``."""
        for n in self.paths:
            if self.group(n) == a:
                for t, line in self.edges(n):
                    if self.group(t) == b:
                        return f"{n}:{line} -> {t}"
        return f"{a} -> {b}"

    def cycle_path(self, comp: list[str]) -> list[str]:
        """One concrete circle through a component, with the import lines, for the report."""
        members = set(comp)
        start = comp[0]
        prev: dict[str, tuple[str, int]] = {}
        queue = [start]
        seen = {start}
        while queue:
            v = queue.pop(0)
            for w, line in self.edges(v):
                if w not in members:
                    continue
                if w == start:
                    path = [f"{v}:{line} -> {w}"]
                    while v != start:
                        u, ln = prev[v]
                        path.append(f"{u}:{ln} -> {v}")
                        v = u
                    return path[::-1]
                if w not in seen:
                    seen.add(w)
                    prev[w] = (v, line)
                    queue.append(w)
        return comp

    def private_reads(self, name: str) -> Iterator[str]:
        tree = self.trees[name]
        top = self.root.name
        path = self.paths[name].relative_to(self.root.parent)
        module_aliases: dict[str, str] = {}
        own_globals = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                       for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                       if isinstance(t, ast.Name)}
        own_globals |= {node.name for node in tree.body
                        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        own_fields = {node.attr for node in ast.walk(tree)  # fields this module's own code assigns
                      if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)}
        own_fields |= {t.id for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef) for node in cls.body
                       if isinstance(node, (ast.Assign, ast.AnnAssign))
                       for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                       if isinstance(t, ast.Name)}
        own_fields |= {node.name for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef) for node in cls.body
                       if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        external = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                external |= {(a.asname or a.name).split(".")[0] for a in node.names
                             if not a.name.startswith(top + ".")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and not (node.module or "").startswith(top):
                external |= {a.asname or a.name for a in node.names}
        for node, target, _ in self.imports(name):
            if not (target == top or target.startswith(top + ".")):
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        module_aliases[alias.asname] = alias.name
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if self.is_module(full):
                    module_aliases[alias.asname or alias.name] = full
                    holder = full.rsplit(".", 1)[0]
                    if is_private(alias.name) and not (name == holder or name.startswith(holder + ".")):
                        yield f"{path}:{node.lineno}: imports the private module {full}"
                elif is_private(alias.name) and target != name:
                    yield f"{path}:{node.lineno}: imports the private name {alias.name} of {target}"
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and is_private(node.attr)) or node.attr in NAMEDTUPLE_API:
                continue
            base = node.value
            if isinstance(base, ast.Name) and base.id in module_aliases:
                yield f"{path}:{node.lineno}: reads {module_aliases[base.id]}.{node.attr}"
            elif isinstance(base, ast.Name) and (base.id in ("self", "cls") or base.id in own_globals
                                                 or base.id in external):
                continue
            elif isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                continue
            elif node.attr not in own_fields:
                yield f"{path}:{node.lineno}: reads the private field {ast.unparse(base)}.{node.attr}"


NAMEDTUPLE_API = {"_asdict", "_replace", "_fields", "_make", "_field_defaults"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def long_files(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*")):
        if path.suffix in SOURCE_SUFFIXES and path.is_file():
            n = len(path.read_text(errors="replace").splitlines())
            if n > MAX_LINES:
                yield f"{path.relative_to(root.parent)}: {n} lines (at most {MAX_LINES})"


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1] / "aiowhisper_npu").resolve()
    pkg = Package(root)
    problems: list[str] = []
    for comp in pkg.cycles():
        problems.append("import circle: " + "; ".join(pkg.cycle_path(comp)) + f"  (component: {', '.join(comp)})")
    for comp in pkg.cycles(grouped=True):
        graph = pkg.graph(grouped=True)
        steps = [pkg.crossing(a, b) for a in comp for b in graph[a] if b in comp]
        problems.append(f"sub-package circle among {', '.join(comp)}: " + "; ".join(steps))
    for name in pkg.paths:
        problems.extend(pkg.private_reads(name))
    problems.extend(long_files(root))
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s) in {len(pkg.paths)} modules of {root.name}/" if problems else
          f"ok: {len(pkg.paths)} modules of {root.name}/: no import circle, no private reads, no file over "
          f"{MAX_LINES} lines")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
