"""Every guard module imports on its own, first, in a fresh process: no import cycle can hide.

A cycle only shows when the modules are imported in one particular order (``import
guard.rules.loader`` before ``guard.engine`` used to fail), and the test suite, which imports
``guard.engine`` early, never hit that order.  So each module is imported first in a process of its
own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import guard

PACKAGE = Path(guard.__file__).parent

# guard/__main__.py is the `python -m guard` entry point: importing it runs the CLI and exits.
ENTRY_POINTS = {"guard.__main__"}


def guard_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return [n for n in names if n not in ENTRY_POINTS]


# One interpreter loads the third-party packages the guard imports (never a guard module), then
# forks one child per guard module; each child imports its module first.  A child is a fresh
# process as far as guard modules go, and 120 imports take seconds, not the minute that 120
# interpreters loading aiohttp, pydantic and mitmproxy each would on a shared two-core machine.
FORK_SERVER = textwrap.dedent(
    """
    import ast, importlib, os, sys, traceback
    from pathlib import Path

    package, modules = Path(sys.argv[1]), sys.argv[2:]
    third_party = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                third_party.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                third_party.add(node.module)
                third_party.update(f"{node.module}.{a.name}" for a in node.names)   # submodules
    for name in sorted(third_party):
        if name.split(".")[0] != "guard":
            try:
                importlib.import_module(name)
            except ImportError:
                pass   # a name, not a submodule; or optional (uvloop on Windows): the child will say
    loaded = sorted(m for m in sys.modules if m == "guard" or m.startswith("guard."))
    if loaded:
        print("guard modules loaded before the fork:", loaded)
        sys.exit(2)
    failed = 0
    for name in modules:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(name)
            except BaseException:
                print("FAILED", name)
                traceback.print_exc(file=sys.stdout)
                sys.stdout.flush()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    print("imported", len(modules) - failed, "of", len(modules))
    sys.exit(1 if failed else 0)
    """
)


def test_every_module_imports_first_in_a_fresh_process() -> None:
    modules = guard_modules()
    assert len(modules) > 100                      # the walk found the package, not an empty folder
    assert "guard.rules.loader" in modules and "guard.mitm.addon" in modules
    done = subprocess.run(
        [sys.executable, "-c", FORK_SERVER, str(PACKAGE), *modules],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"imported {len(modules)} of {len(modules)}" in done.stdout


def test_the_rule_loader_imports_before_the_engine() -> None:
    """The reported order, with nothing preloaded: the plain `python -c` an operator's script runs."""
    done = subprocess.run(
        [sys.executable, "-c", "import guard.rules.loader, guard.rules.evaluate, guard.rules.model, guard.engine"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_engine_package_still_offers_the_engine() -> None:
    """`from guard.engine import Engine` (resolved lazily) is the class itself, and typos still fail."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(
            """
            import guard.engine as e
            from guard.engine.core import Engine
            assert e.Engine is Engine
            try:
                e.Engin
            except AttributeError:
                pass
            else:
                raise SystemExit("a missing name resolved")
            """
        )],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
