"""Smoke check of an installation as the README's serve command makes it (no test extra).

Imports every module of the medserve package and runs ``--help`` of every CLI command the README and
``medserve --help`` name, in this interpreter's environment. Prints one line per failure and exits 1
on any; run it with the environment's own Python, e.g. ``.venv/bin/python scripts/smoke.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import pkgutil
import sys
import traceback

import medserve
from medserve.cli.main import build_parser


#: Engines installed by an extra the README's serve command does not install: a module that needs one
#: may fail to import without it (it is imported only when a model names that engine).
OPTIONAL_ENGINES = {"openvino": "openvino", "pynvml": "gpu"}


def modules() -> list[str]:
    names = [medserve.__name__]
    for info in pkgutil.walk_packages(medserve.__path__, prefix="medserve."):
        if ".migrations." not in info.name and not info.name.endswith("__main__"):
            names.append(info.name)
    return sorted(names)


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, (*prefix, name))
    return found


def main() -> int:
    failures: list[str] = []
    imported = 0
    for name in modules():
        try:
            importlib.import_module(name)
            imported += 1
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing not in OPTIONAL_ENGINES:
                failures.append(f"import {name}: {exc}")
            else:
                print(f"smoke: {name} needs {missing} (the [{OPTIONAL_ENGINES[missing]}] extra), not installed")
        except Exception:
            failures.append(f"import {name}: {traceback.format_exc(limit=1).strip().splitlines()[-1]}")
    helped = 0
    for command in commands(build_parser()):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                build_parser().parse_args([*command, "--help"])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                failures.append(f"medserve {' '.join(command)} --help: exit {exit_.code}")
                continue
        helped += 1
        if "usage:" not in out.getvalue():
            failures.append(f"medserve {' '.join(command)} --help printed no usage")
    for failure in failures:
        print(failure, file=sys.stderr)
    print(f"smoke: imported {imported} modules, ran --help of {helped} commands, {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
