"""Where a name from a request becomes a path, and where a path becomes a name again.

A request names a run by its folder name inside the runs folder, a file by a path relative
to a run or to a data folder (`ROOT/relative/path`). Everything here refuses, with
`PathRefused`, what could reach outside those folders: `..`, absolute paths, backslashes,
control characters and symlinks that lead elsewhere. The other way round, `Roots.shown`
turns a real path into `ROOT/relative` (or a bare file name), so no real path of the
server's machine is ever sent to a browser."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from migaki import rundir

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PathRefused(Exception):
    """A name or path from a request that does not lead to an allowed place. The message is
    safe to show a user: it never holds a real path of this machine."""


def is_run_name(name: str) -> bool:
    """Whether `name` can be a run folder's name (`NAME`, and no `..` anywhere in it)."""
    return bool(NAME.fullmatch(name)) and ".." not in name


def run_path(root: Path, name: str) -> Path:
    """The run folder `name` inside `root`, symlinks resolved. Raises PathRefused for a name
    that is not one folder name, a folder that resolves anywhere but directly inside `root`,
    and a folder that is not a run (no recipe.yaml)."""
    if not isinstance(name, str) or not is_run_name(name):
        raise PathRefused(
            "Not a run name: give the run's folder name (letters, digits, '.', '_', '-')"
        )
    base = Path(root).resolve()
    path = (base / name).resolve()
    if path.parent != base:  # a symlinked run folder that points elsewhere
        raise PathRefused(f"No run named {name} in the runs folder")
    if not rundir.is_run(path):
        raise PathRefused(f"No run named {name} in the runs folder")
    return path


def inside(root: Path, relative: str) -> Path:
    """The real path (symlinks followed) of `relative`, a path of one or more parts inside
    `root`. Raises PathRefused for an empty, absolute or `..` path, backslashes, control
    characters (NUL included), and anything that resolves outside `root` or to `root`
    itself. The path need not exist."""
    if not isinstance(relative, str) or not relative.strip():
        raise PathRefused("Give a path inside the folder")
    if "\\" in relative or CONTROL.search(relative):
        raise PathRefused("A path may not hold backslashes or control characters")
    parts = PurePosixPath(relative)
    if parts.is_absolute() or relative.startswith("~"):
        raise PathRefused("Give a path relative to the folder, not an absolute one")
    if ".." in parts.parts:
        raise PathRefused("A path may not hold '..'")
    base = Path(root).resolve()
    path = (base / parts).resolve()
    if path == base or not path.is_relative_to(base):
        raise PathRefused("The path leads outside the folder")
    return path


@dataclass
class Roots:
    """The folders a request may reach: the runs folder and the data folders by name."""

    runs: Path
    data: dict[str, Path] = field(default_factory=dict)

    def data_file(self, spec: str) -> Path:
        """The real path of `spec`, `ROOT/relative/path` naming a data folder and a path
        inside it. Raises PathRefused for an unknown folder or a path `inside` refuses."""
        if not isinstance(spec, str):
            raise PathRefused("Give a data file as FOLDER/path inside it")
        root_name, _, relative = spec.partition("/")
        if not root_name or not relative:
            raise PathRefused("Give a data file as FOLDER/path inside it (e.g. data/faq.jsonl)")
        if root_name not in self.data:
            known = ", ".join(sorted(self.data)) or "none given (start the UI with --data DIR)"
            unknown = f" {root_name}" if is_run_name(root_name) else ""
            raise PathRefused(f"Unknown data folder{unknown}: the data folders are {known}")
        return inside(self.data[root_name], relative)

    def shown(self, path: str | Path) -> str:
        """`path` as a browser may see it: `ROOT/relative` under a data folder (the form
        `data_file` takes back) or under the runs folder (its folder name), else the bare
        file name. The deepest folder wins when folders nest."""
        real = Path(path).expanduser().resolve()
        best: tuple[int, str] | None = None
        for name, folder in self._named_folders():
            if real == folder or real.is_relative_to(folder):
                relative = real.relative_to(folder).as_posix()
                text = name if relative == "." else f"{name}/{relative}"
                if best is None or len(folder.parts) > best[0]:
                    best = (len(folder.parts), text)
        return best[1] if best else real.name

    def _named_folders(self) -> list[tuple[str, Path]]:
        runs = Path(self.runs).resolve()
        folders = [(runs.name, runs)]
        folders += [(name, Path(folder).resolve()) for name, folder in self.data.items()]
        return folders
