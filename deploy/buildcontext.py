"""Copy what ``docker build`` would send as its context: the repository minus ``.dockerignore``.

``deploy/install-check.sh`` builds from this copy, and the tests ask it which
files reach the image, so a pattern that drops a file the build needs fails
here, on a machine without a Docker engine, instead of in the image build.

Matching follows Docker's rules: patterns are relative to the context root, a
leading ``!`` re-includes, the last matching pattern wins, a pattern that
matches a folder matches everything under it, ``*`` and ``?`` stop at ``/``
and ``**`` spans any number of folders.

    python3 deploy/buildcontext.py [--list] CONTEXT [DEST]
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str                 # cleaned: no "!", no leading "/"
    regex: re.Pattern[str]
    exception: bool           # a "!" line: re-include what matches


def _translate(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            out.append("[" + pattern[i + 1 : end] + "]")  # Go negates a class with ^, as re does
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "^" + "".join(out) + "$"


def parse(text: str) -> list[Pattern]:
    """The patterns of a ``.dockerignore`` text, cleaned the way Docker cleans them."""
    patterns: list[Pattern] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
        line = posixpath.normpath(line).lstrip("/")
        if line in ("", "."):
            continue
        patterns.append(Pattern(line, re.compile(_translate(line)), exception))
    return patterns


def excluded(path: str, patterns: list[Pattern]) -> bool:
    """Whether the context-relative ``path`` (``a/b/c``) is left out of the build context."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for p in patterns:
        if any(p.regex.match(c) for c in candidates):
            result = not p.exception
    return result


def _may_reinclude_below(folder: str, patterns: list[Pattern]) -> bool:
    """Whether a "!" pattern could match below ``folder``; if none can, an excluded folder is not walked."""
    depth = folder.count("/") + 1
    for p in patterns:
        if not p.exception:
            continue
        segs = p.text.split("/")
        if "**" in p.text:
            return True
        if len(segs) > depth and all(
            re.match(_translate(s), d) for s, d in zip(segs, folder.split("/"), strict=False)
        ):
            return True
    return False


def context_files(root: Path) -> Iterator[str]:
    """Every file (and symlink) Docker would send, as sorted context-relative paths."""
    ignore = root / ".dockerignore"
    patterns = parse(ignore.read_text()) if ignore.is_file() else []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        # .git and .venv hold most of a checkout's files: never walk a folder nothing can come back from
        dirnames[:] = sorted(
            d for d in dirnames
            if not excluded(prefix + d, patterns) or _may_reinclude_below(prefix + d, patterns)
        )
        for name in sorted(filenames):
            rel = prefix + name
            if not excluded(rel, patterns):
                yield rel


def copy_context(root: Path, dest: Path) -> list[str]:
    files = list(context_files(root))
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target, follow_symlinks=False)
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--list", action="store_true", help="print the files instead of copying them")
    p.add_argument("context", type=Path)
    p.add_argument("dest", type=Path, nargs="?")
    args = p.parse_args(argv)
    if args.list:
        for rel in context_files(args.context):
            print(rel)
        return 0
    if args.dest is None:
        p.error("DEST is needed unless --list")
    files = copy_context(args.context, args.dest)
    print(f"buildcontext: {len(files)} files -> {args.dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
