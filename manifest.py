"""The saved-model directory as `requant.load` reads it: its manifest's fields, the file
set each backend allows, and files read only after they are checked.

A saved directory holds manifest.json, pipeline.json, model.onnx (+ model.onnx.data)
and, for a TVM target, its native code (model.so; for CUDA also model.cu and
model.fatbin). `read_saved(root, trust_code=...)` accepts it only when:

- every entry is a regular file (no symlink, directory, device or FIFO: a listed name
  that links out of the directory, or to /proc, is refused before it is opened), every
  file but the manifest is listed in the manifest, and the listed set is exactly what
  the manifest's backend writes (`requant.backends.SavedFiles`: an ONNX artifact with
  a model.so in it, or a TVM one without its library, is refused);
- every manifest field has its type and range (`check_manifest`: format and version,
  target, backend and device, options such as `threads` within 0..4 per CPU, the
  input/output signature with known dtypes and dims >= 0, sizes, and a sha256 and byte
  count per file), and pipeline.json has the shape `requant.save` writes;
- each file has the manifest's size (checked on the open file, before reading, so a
  listed file cannot make the check read without end) and sha256;
- code files are loaded only when the manifest's MAC verifies under this user's key
  (`requant.trust`: built by this user's requant) or the caller passed
  `trust_code=True`. Data (ONNX) loads either way. While they are hashed, code files
  are copied into a private temporary directory (mode 0700), and the runtime loads
  those copies: what runs is what was checked.

Every refusal is a `SavedModelError` (a `TrustError` for code of unknown origin) naming
the directory, the file or field and what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from requant.errors import SavedModelError, TrustError
from requant.trust import Provenance, manifest_provenance

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "PIPELINE_FILE",
    "GRAPH_FILES",
    "MAX_METADATA_BYTES",
    "SavedDirectory",
    "read_saved",
    "read_manifest",
    "check_manifest",
    "check_pipeline",
    "backend_files",
    "known_file_names",
    "looks_like_a_save",
    "sha256_file",
]

logger = logging.getLogger(__name__)

FORMAT = "requant-compiled-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PIPELINE_FILE = "pipeline.json"
GRAPH_FILES = ("model.onnx", "model.onnx.data")
"""The compiled graph as ONNX: in every save (the runtime of an ONNX target; what
`.graph` reads back for a TVM one); the .data file only with external weights."""

MAX_METADATA_BYTES = 16 << 20
"""manifest.json and pipeline.json are a few KiB; more is not a requant save."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
_MAX_NAME = 4096  # characters in a target, input or output name


# ----------------------------------------------------------------------------- files


def _open_regular(path: Path, where: str) -> tuple[int, os.stat_result]:
    """An fd on `path`, which must be a regular file and not a symlink (checked on the
    open file: O_NOFOLLOW refuses a link, O_NONBLOCK keeps a FIFO from blocking)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if os.path.islink(path):
            raise SavedModelError(f"{where}: {path.name} is a symlink; a saved directory holds its own files "
                                  f"(copy the files in, not links)") from exc
        if isinstance(exc, FileNotFoundError):
            raise SavedModelError(f"{where}: {path.name} is missing") from exc
        raise SavedModelError(f"{where}: cannot open {path.name}: {exc.strerror}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise SavedModelError(f"{where}: {path.name} is not a regular file")
    return fd, info


def read_small_file(path: Path, where: str, limit: int = MAX_METADATA_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes."""
    fd, info = _open_regular(path, where)
    try:
        if info.st_size > limit:
            raise SavedModelError(f"{where}: {path.name} is {info.st_size} bytes, more than the {limit} a "
                                  f"requant save writes")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise SavedModelError(f"{where}: {path.name} grew past {limit} bytes while being read")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def sha256_file(path: Path, where: str, size: int | None = None, copy_to: Path | None = None) -> str:
    """The sha256 of a regular file; with `size`, a file of another size is refused
    before reading; with `copy_to`, the bytes hashed are also written there (mode 0600)."""
    fd, info = _open_regular(path, where)
    out = None
    try:
        if size is not None and info.st_size != size:
            raise SavedModelError(f"{where}: {path.name} does not match its sha256 in {MANIFEST} ({info.st_size} "
                                  f"bytes, listed as {size}: modified or corrupted after saving)")
        if copy_to is not None:
            out = os.open(copy_to, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        h = hashlib.sha256()
        read = 0
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            read += len(chunk)
            if size is not None and read > size:
                raise SavedModelError(f"{where}: {path.name} grew while being read")
            h.update(chunk)
            if out is not None:
                os.write(out, chunk)
        return h.hexdigest()
    finally:
        os.close(fd)
        if out is not None:
            os.close(out)


# ----------------------------------------------------------------------------- fields


def _fail(where: str, what: str) -> SavedModelError:
    return SavedModelError(f"{where}: {MANIFEST} {what}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_name(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME or "\x00" in value:
        raise _fail(where, f"field {what} must be a non-empty string, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_signature(items: Any, where: str, what: str) -> None:
    from requant.ir import dtypes

    if not isinstance(items, list) or not items:
        raise _fail(where, f"field {what} must be a non-empty list of {{name, dtype, shape}}, got {_shown(items)}")
    seen: set[str] = set()
    for i, sig in enumerate(items):
        at = f"{what}[{i}]"
        if not isinstance(sig, dict) or set(sig) != {"name", "dtype", "shape"}:
            raise _fail(where, f"field {at} must be {{name, dtype, shape}}, got {_shown(sig)}")
        name = _check_name(sig["name"], where, f"{at}.name")
        if name in seen:
            raise _fail(where, f"field {what} names '{name}' twice")
        seen.add(name)
        try:
            dtypes.dtype(_check_name(sig["dtype"], where, f"{at}.dtype"))
        except (ValueError, TypeError, OverflowError) as exc:
            raise _fail(where, f"field {at}.dtype {_shown(sig['dtype'])} is not a dtype requant knows") from exc
        shape = sig["shape"]
        if shape is None:
            continue
        if not isinstance(shape, list) or len(shape) > 64:
            raise _fail(where, f"field {at}.shape must be a list of dims or null, got {_shown(shape)}")
        for d in shape:
            ok = d is None or (_is_int(d) and 0 <= d < 2**62) or (isinstance(d, str) and d and len(d) < 256)
            if not ok:
                raise _fail(where, f"field {at}.shape has dim {_shown(d)}: dims are ints >= 0, names or null")


def _check_files(files: Any, where: str) -> None:
    if not isinstance(files, dict) or not files:
        raise _fail(where, "lists no files")
    for name, entry in files.items():
        if not isinstance(name, str) or Path(name).name != name or name.startswith(".") or name == MANIFEST:
            raise _fail(where, f"lists {name!r}, which is not a file in the directory")
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not _SHA256.fullmatch(entry["sha256"]) or not _is_int(entry.get("bytes")) or entry["bytes"] < 0):
            raise _fail(where, f"entry of {name} must be {{sha256: 64 hex digits, bytes: int >= 0}}, "
                               f"got {_shown(entry)}")


def _check_options(options: Any, where: str) -> None:
    from requant.targets import threads_problem

    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise _fail(where, f"field options must be an object, got {_shown(options)}")
    threads = options.get("threads", 0)
    problem = threads_problem(0 if threads is None else threads)
    if problem:
        raise _fail(where, f"field options.threads {problem}; pass requant.load(..., threads=N) to override it")


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """`manifest` with every field checked (module docstring); returns it."""
    from requant.backends import RUNTIMES

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(where, f"is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or not _is_int(version):
        raise _fail(where, f"has format_version {_shown(version)}; this requant reads version {FORMAT_VERSION} "
                           f"(saved by requant {_shown(manifest.get('requant_version', '?'))})")
    _check_name(manifest.get("target"), where, "target")
    backend = manifest.get("backend")
    if not isinstance(backend, str) or backend not in RUNTIMES:
        raise _fail(where, f"names backend {_shown(backend)}; this requant has {', '.join(RUNTIMES)}")
    device = manifest.get("device")
    devices = _backend_devices(backend)
    if device not in devices:
        raise _fail(where, f"names device {_shown(device)} for backend {backend}; it has {', '.join(devices)}")
    known = _known_target(manifest["target"])
    if known is not None and (known.backend, known.device) != (backend, device):
        raise _fail(where, f"says target {manifest['target']} runs on {backend}/{device}; that target is "
                           f"{known.backend}/{known.device}")
    if not isinstance(manifest.get("simulated", False), bool):
        raise _fail(where, f"field simulated must be true or false, got {_shown(manifest.get('simulated'))}")
    _check_options(manifest.get("options", {}), where)
    _check_signature(manifest.get("inputs"), where, "inputs")
    _check_signature(manifest.get("outputs"), where, "outputs")
    sizes = manifest.get("sizes", {})
    if not isinstance(sizes, dict) or not all(v is None or (_is_int(v) and v >= 0) for v in sizes.values()):
        raise _fail(where, f"field sizes must map names to byte counts, got {_shown(sizes)}")
    _check_files(manifest.get("files"), where)
    return manifest


def _backend_devices(backend: str) -> tuple[str, ...]:
    from requant.backends import runtime_backend

    return tuple(getattr(runtime_backend(backend), "DEVICES", ("cpu",)))


def _known_target(name: str) -> Any:
    from requant.targets import TARGETS

    return TARGETS.get(name)


def check_pipeline(pipeline: Any, where: str) -> dict[str, Any]:
    """pipeline.json as `CompiledModel.save` writes it: {steps: [...], ran: [step
    records]}, each record with a name, counts and a stats object."""
    def bad(what: str) -> SavedModelError:
        return SavedModelError(f"{where}: {PIPELINE_FILE} {what}")

    if not isinstance(pipeline, dict):
        raise bad("is not a JSON object")
    for key in ("steps", "ran"):
        if not isinstance(pipeline.get(key, []), list):
            raise bad(f"field {key} must be a list")
    for i, step in enumerate(pipeline.get("steps", [])):
        if not isinstance(step, dict) or not isinstance(step.get("name"), str):
            raise bad(f"steps[{i}] must be an object with a name")
    for i, record in enumerate(pipeline.get("ran", [])):
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            raise bad(f"ran[{i}] must be an object with a name")
        for key in ("nodes_before", "nodes_after", "added", "removed"):
            if not _is_int(record.get(key, 0)) or record.get(key, 0) < 0:
                raise bad(f"ran[{i}].{key} must be an int >= 0, got {_shown(record.get(key))}")
        if not isinstance(record.get("changed", False), bool) or not isinstance(record.get("stats", {}), dict):
            raise bad(f"ran[{i}] must have changed: bool and stats: object")
    return pipeline


# ----------------------------------------------------------------------------- file sets


def backend_files(backend: str, device: str) -> Any:
    """The `SavedFiles` of a save for `backend`/`device`: the backend's artifact, the
    graph as ONNX and pipeline.json (manifest.json itself is not listed)."""
    from requant.backends import SavedFiles, runtime_backend

    own = runtime_backend(backend).saved_files(device)
    return SavedFiles(own.required | {GRAPH_FILES[0], PIPELINE_FILE},
                      (own.optional | {GRAPH_FILES[1]}) - own.required, own.code)


def known_file_names() -> frozenset[str]:
    """Every name any backend's save can hold (manifest.json included)."""
    from requant.backends import RUNTIMES

    names = {MANIFEST}
    for backend in RUNTIMES:
        for device in _backend_devices(backend):
            files = backend_files(backend, device)
            names |= files.required | files.optional
    return frozenset(names)


def _check_entries(root: Path, listed: set[str], where: str) -> None:
    """Every entry of `root` is a regular file, listed (or the manifest)."""
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise SavedModelError(f"{where}: cannot list the directory: {exc.strerror}") from exc
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.is_symlink():
            raise SavedModelError(f"{where}: {entry.name} is a symlink; a saved directory holds its own files "
                                  f"(copy the files in, not links)")
        if entry.name != MANIFEST and entry.name not in listed:
            raise SavedModelError(f"{where}: {entry.name} is not listed in {MANIFEST}; a saved directory holds "
                                  f"exactly the files its manifest lists (remove it, or save again)")
        if not entry.is_file(follow_symlinks=False):
            raise SavedModelError(f"{where}: {entry.name} is not a regular file")


def _check_file_set(manifest: Mapping[str, Any], where: str) -> Any:
    files = backend_files(manifest["backend"], manifest["device"])
    listed = set(manifest["files"])
    missing = sorted(files.required - listed)
    if missing:
        raise _fail(where, f"does not list {', '.join(missing)}, which a {manifest['backend']} save holds")
    extra = sorted(listed - files.required - files.optional)
    if extra:
        kind = "native code" if any(Path(n).suffix in (".so", ".dll", ".dylib", ".fatbin", ".cu") for n in extra) else "a file"
        raise _fail(where, f"lists {', '.join(extra)} ({kind}), which a {manifest['backend']}/{manifest['device']} "
                           f"save never holds")
    return files


# ----------------------------------------------------------------------------- reading


@dataclass
class SavedDirectory:
    """A saved directory that passed every check: its manifest and pipeline.json, whether
    this user built it, and the checked private copies of its code files (kept alive
    as long as this object: the runtime loads them from there)."""

    root: Path
    manifest: dict[str, Any]
    pipeline: dict[str, Any]
    provenance: Provenance
    code_files: dict[str, Path] = field(default_factory=dict)
    _copies: Any = None  # the TemporaryDirectory holding code_files


def read_manifest(root: Path) -> dict[str, Any]:
    """The checked manifest of `root` (the directory itself checked to be one)."""
    where = f"cannot load {root}"
    if not os.path.lexists(root):
        raise SavedModelError(f"{where}: no such directory")
    if root.is_symlink():
        raise SavedModelError(f"{where}: it is a symlink; give the directory itself")
    if not root.is_dir():
        raise SavedModelError(f"{where}: not a directory (requant.load takes the directory CompiledModel.save wrote)")
    if not os.path.lexists(root / MANIFEST):
        raise SavedModelError(f"{where}: {MANIFEST} is missing (not a saved requant model, or an incomplete save)")
    raw = read_small_file(root / MANIFEST, where)
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise SavedModelError(f"{where}: {MANIFEST} is not valid JSON: {exc}") from exc
    return check_manifest(manifest, where)


def read_saved(root: Path, *, trust_code: bool = False, run_code: bool = True) -> SavedDirectory:
    """`root` checked as the module docstring says; refusals raise `SavedModelError`.
    `run_code=False` (inspecting the graph and metadata, which runs nothing) checks
    code files like the others but neither needs trust nor copies them."""
    where = f"cannot load {root}"
    manifest = read_manifest(root)
    files = _check_file_set(manifest, where)
    _check_entries(root, set(manifest["files"]), where)
    provenance = manifest_provenance(manifest)
    code = sorted(files.code & set(manifest["files"])) if run_code else []
    if code and not provenance.built_here and not trust_code:
        raise TrustError(
            f"{where}: {', '.join(code)} is native code that this user's requant did not build ({provenance.reason}); "
            f"loading it runs it. Load it only if you trust where it came from: "
            f"requant.load(dir, trust_code=True) or `--trust-code`")
    copies = tempfile.TemporaryDirectory(prefix="requant-checked-") if code else None
    saved = SavedDirectory(root, manifest, {}, provenance, _copies=copies)
    for name, entry in sorted(manifest["files"].items()):
        copy_to = Path(copies.name) / name if name in code else None
        digest = sha256_file(root / name, where, size=entry["bytes"], copy_to=copy_to)
        if digest != entry["sha256"]:
            raise SavedModelError(f"{where}: {name} does not match its sha256 in {MANIFEST} "
                                  f"(modified or corrupted after saving)")
        if copy_to is not None:
            saved.code_files[name] = copy_to
    raw = read_small_file(root / PIPELINE_FILE, where)
    try:
        pipeline = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise SavedModelError(f"{where}: {PIPELINE_FILE} is not valid JSON: {exc}") from exc
    saved.pipeline = check_pipeline(pipeline, where)
    if code and not provenance.built_here:
        logger.warning("%s: loading native code not built by this user (trust_code=True): %s", root, ", ".join(code))
    return saved


def looks_like_a_save(directory: Path) -> bool:
    """Whether `directory` holds only an earlier requant save: a manifest of our format
    and, besides it, only regular files it lists under names a save can have."""
    try:
        raw = read_small_file(directory / MANIFEST, str(directory))
        manifest = json.loads(raw)
    except (SavedModelError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        return False
    allowed = (set(manifest["files"]) & known_file_names()) | {MANIFEST}
    try:
        return all(e.name in allowed and e.is_file(follow_symlinks=False) for e in os.scandir(directory))
    except OSError:
        return False
