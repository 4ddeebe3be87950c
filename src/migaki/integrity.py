"""File manifests of checkpoints and final/: every file's size and SHA-256, written last and
atomically, so that a folder cut short (a full disk, a copy that stopped, a file lost) is
found and named before anything loads from it, instead of failing inside safetensors or torch.

Sizes are always compared; hashes whenever the folder is small enough to hash in about a
second (`CHEAP_BYTES`), and always with `verify=True`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FILES = "files.json"
CHEAP_BYTES = 2 * 2**30  # hashing runs at about 1-2 GB/s: below this it costs little
# Folders this process hashed and found intact, with the size and mtime of every file then:
# eval, the model loader and the classifier loader all check one final/, and rehashing a
# large one each time would cost seconds for nothing.
_HASHED: dict[Path, tuple] = {}


def write_manifest(folder: Path) -> None:
    """Record every file under `folder` (sizes and SHA-256) in folder/files.json, written to a
    temporary name and renamed, after everything else is on disk."""
    files = {
        name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for name, path in _files(folder)
    }
    staging = folder / f".{FILES}.tmp"
    with open(staging, "w", encoding="utf-8") as handle:
        json.dump({"files": files}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, folder / FILES)


def problems(folder: Path, verify: bool = False, required: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with `folder`, each naming a file ("optimizer.pt missing"); [] when it is
    intact. A folder without files.json (written before manifests existed) is checked for its
    `required` files only."""
    listed = _read(folder)
    if listed is None:
        if (folder / FILES).exists():
            return [f"{FILES} unreadable"]
        return [f"{name} missing" for name in required if not (folder / name).is_file()]
    found = []
    total = sum(entry["bytes"] for entry in listed.values())
    stamp = _stamp(folder, listed)
    hashing = (verify or total <= CHEAP_BYTES) and _HASHED.get(folder.resolve()) != stamp
    for name, entry in sorted(listed.items()):
        path = folder / name
        if not path.is_file():
            found.append(f"{name} missing")
        elif path.stat().st_size != entry["bytes"]:
            found.append(
                f"{name} has {path.stat().st_size:,} bytes, {entry['bytes']:,} were written"
            )
        elif hashing and _sha256(path) != entry["sha256"]:
            found.append(f"{name} changed since it was written (SHA-256 differs)")
    if hashing and not found:
        _HASHED[folder.resolve()] = stamp
    return found


def _stamp(folder: Path, listed: dict[str, dict]) -> tuple | None:
    """(name, size, mtime) of every listed file, or None when one is missing."""
    try:
        return tuple(
            (name, (folder / name).stat().st_size, (folder / name).stat().st_mtime_ns)
            for name in sorted(listed)
        )
    except OSError:
        return None


def _read(folder: Path) -> dict[str, dict] | None:
    try:
        files = json.loads((folder / FILES).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    valid = isinstance(files, dict) and all(
        isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
        for e in files.values()
    )
    return files if valid else None


def _files(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in (FILES, f".{FILES}.tmp"):
            yield path.relative_to(folder).as_posix(), path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
