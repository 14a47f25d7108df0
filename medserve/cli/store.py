"""Which settings and which store a command uses.

Commands other than ``serve`` work on the server's store: they read the server's settings file
(``--config FILE``, else ``$MEDSERVE_CONFIG``), take ``--data-dir`` (else ``$MEDSERVE_DATA_DIR``, else
the file's ``data_dir``), say on standard error which data dir and database they use, and refuse to
create a new store unless ``--init`` asks for one: a command run from the wrong folder must not
silently start an empty store of its own.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from medserve.values.errors import InvalidInput, StoreUnavailable

#: The environment variable naming the settings file, for ``serve`` and every other command.
CONFIG_ENV = "MEDSERVE_CONFIG"

_WHERE = (
    "point the command at the server's store with --data-dir DIR, MEDSERVE_DATA_DIR=DIR or the "
    f"server's settings file (--config FILE or {CONFIG_ENV}=FILE)"
)


class StoreNotFound(StoreUnavailable):
    """The command's settings lead to a store that does not exist, and ``--init`` was not given."""


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"the server's YAML settings file (data_dir, database_url, ...; default: ${CONFIG_ENV})",
    )


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--data-dir`` and ``--init``, for a command that opens the store."""
    add_config_option(parser)
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="the server's data dir (default: $MEDSERVE_DATA_DIR, else the settings file's, else "
        "./medserve_data)",
    )
    parser.add_argument(
        "--init",
        action="store_true",
        help="create the store if it does not exist yet (otherwise the command refuses)",
    )


def config_file(args: argparse.Namespace) -> Path | None:
    """The settings file: ``--config``, else ``$MEDSERVE_CONFIG``; None when neither is given."""
    given: Path | None = getattr(args, "config", None)
    if given is not None:
        return given
    from_env = os.environ.get(CONFIG_ENV, "")
    return Path(from_env) if from_env else None


def command_settings(args: argparse.Namespace, **overrides: Any) -> Any:
    """The settings a command runs with: the settings file, the environment, then its own flags."""
    from medserve.settings import load_settings

    return load_settings(config_file(args), data_dir=getattr(args, "data_dir", None), **overrides)


def describe(settings: Any) -> str:
    """``data dir /abs/dir, database sqlite:////abs/dir/medserve.db`` (a URL's password hidden)."""
    from medserve.trust import describe_store

    return describe_store(settings)


def announce(settings: Any) -> None:
    """Say on standard error (standard output stays the command's answer) which store is used."""
    print(f"medserve: using {describe(settings)}", file=sys.stderr, flush=True)


def database_exists(url: str) -> bool:
    """Whether the database at ``url`` carries medserve's schema (SQLite: whether its file exists)."""
    from sqlalchemy.engine import make_url

    from medserve.store.database import Database
    from medserve.store.migrate import current_revision

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return bool(parsed.database) and Path(str(parsed.database)).is_file()
    database = Database(url)
    try:
        return current_revision(database.engine) is not None
    finally:
        database.dispose()


def store_exists(settings: Any) -> bool:
    """Whether the data dir exists and its database carries medserve's schema."""
    from medserve.store.database import default_url

    if not settings.data_dir.is_dir():
        return False
    return database_exists(settings.database_url or default_url(settings.data_dir))


def require_store(settings: Any, args: argparse.Namespace) -> None:
    """Announce the store; refuse (``StoreNotFound``) when it does not exist and ``--init`` is not set."""
    announce(settings)
    if getattr(args, "init", False) or store_exists(settings):
        return
    raise StoreNotFound(
        f"no medserve store at {describe(settings)}; {_WHERE}, or pass --init to create a new one there"
    )


def require_database(url: str, args: argparse.Namespace) -> None:
    """Like :func:`require_store`, for a command given a database URL of its own."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise InvalidInput("--database-url: not a database URL (e.g. sqlite:///profiles.db)") from None
    print(f"medserve: using database {shown}", file=sys.stderr, flush=True)
    if getattr(args, "init", False) or database_exists(url):
        return
    raise StoreNotFound(f"no medserve store in the database {shown}; pass --init to create one there")


def open_store(args: argparse.Namespace, **overrides: Any) -> tuple[Any, Any]:
    """``(settings, database)``: the existing store (migrated), or a new one with ``--init``."""
    from medserve.trust import open_database

    settings = command_settings(args, **overrides)
    require_store(settings, args)
    return settings, open_database(settings)
