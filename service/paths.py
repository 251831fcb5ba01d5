"""Where the SQL files live, from an editable install or a built wheel."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def sql_dir() -> Path:
    """The `sql/` folder: packaged beside the code in a wheel, at the repository
    root in an editable install."""
    for candidate in (_PACKAGE / "sql", _PACKAGE.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError("the sql/ folder of context-store is missing from this install")
