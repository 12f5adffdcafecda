"""The files of a local directory, without ever leaving it.

One rule for every directory neuron-spec reads whole or ships somewhere (a checkpoint it uploads,
a cache entry it hashes and mirrors): a symbolic link is followed only when what it points to
resolves inside the directory, or inside one of the extra places the caller allows (a Hugging
Face snapshot's links into its own repository's `blobs/`). A link to `~/.aws/credentials`, to
`/etc/passwd` or to a directory elsewhere is skipped and named; a link back into a directory
already walked (`loop -> .`) is skipped too, so nothing is listed twice and the walk ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Tree:
    root: Path
    files: list[Path] = field(default_factory=list)  # regular files, sorted, as paths in root
    skipped: list[str] = field(default_factory=list)  # one sentence per link left out


def hf_snapshot_blobs(root: Path) -> list[Path]:
    """`.../models--org--name/blobs` when root is one of that repository's snapshots."""
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return [root.parent.parent / "blobs"]
    return []


def _inside(target: Path, places: Iterable[Path]) -> bool:
    return any(target == p or p in target.parents for p in places)


def walk(root: Path, also_inside: Iterable[Path] = (), hidden: bool = False) -> Tree:
    """Regular files under root, links followed only to places inside (see the module)."""
    real_root = root.resolve()
    places = [real_root, *(p.resolve() for p in also_inside)]
    tree = Tree(root)
    seen_dirs = {real_root}
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            # real entries before links: a link to a sibling directory is then the duplicate
            entries = sorted(os.scandir(directory), key=lambda e: (e.is_symlink(), e.name))
        except OSError as exc:
            tree.skipped.append(f"{directory}: cannot be read ({exc.strerror})")
            continue
        subdirs = []
        for entry in entries:
            if not hidden and entry.name.startswith("."):
                continue
            path = Path(entry.path)
            shown = path.relative_to(root).as_posix()
            if entry.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    tree.skipped.append(f"{shown}: a broken or looping link, skipped")
                    continue
                if not _inside(target, places):
                    tree.skipped.append(
                        f"{shown}: links to {target}, outside {root}; skipped (copy the file "
                        "into the directory if it belongs there)"
                    )
                    continue
            else:
                target = path
            try:
                if target.is_dir():
                    real = target.resolve()
                    if real in seen_dirs or _inside(real_root, [real]):
                        tree.skipped.append(
                            f"{shown}: a directory already walked (a loop or a second name); "
                            "skipped"
                        )
                        continue
                    seen_dirs.add(real)
                    subdirs.append(path)
                elif target.is_file():
                    tree.files.append(path)
            except OSError as exc:
                tree.skipped.append(f"{shown}: cannot be read ({exc.strerror})")
        stack.extend(reversed(subdirs))
    tree.files.sort(key=lambda p: p.relative_to(root).as_posix())
    return tree
