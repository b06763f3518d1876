"""Optional dependencies, imported on first use with a message that says how to get them."""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

_EXTRAS = {
    "gguf": ("gguf", "importing GGUF files"),
    "jinja2": ("chat", "chat templates"),
    "matplotlib": ("plots", "plots"),
    "openpyxl": ("excel", "reading .xlsx data files"),
    "xlrd": ("excel", "reading .xls data files"),
    "pyarrow": ("parquet", "reading .parquet data files"),
    "pypdf": ("pdf", "reading a PDF's text"),
    "tqdm": ("progress", "progress bars"),
}


class MissingDependencyError(ImportError):
    pass


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise an error naming the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]  # pyarrow.parquet comes with pyarrow
        extra, default_purpose = _EXTRAS.get(package, (None, package))
        hint = f"pip install 'prefopt[{extra}]'  (or: pip install {package})" if extra else f"pip install {package}"
        raise MissingDependencyError(
            f"{purpose or default_purpose} needs the optional package {package!r}, which is not installed. "
            f"Install it with: {hint}"
        ) from None


# seconds between a bar's redraws where it goes to a file or a pipe (a job's log), not a terminal:
# tqdm's own 0.1 s filled a day's log with redraws; the bar still draws its start and its end
LOG_SECONDS = 30.0


def progress(iterable=None, **kw):
    """A tqdm progress bar when tqdm is installed, else the bare iterable (no bar); redrawn
    every :data:`LOG_SECONDS` where it writes to a file or a pipe rather than a terminal or a
    notebook."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable if iterable is not None else _NoBar()
    if "mininterval" not in kw and not _watched(kw.get("file") or sys.stderr):
        kw["mininterval"] = LOG_SECONDS
    return tqdm(iterable, **kw)


def _watched(stream) -> bool:
    """Whether someone watches ``stream`` as it is drawn: a terminal, or a Jupyter notebook's
    output (whose streams are no terminals)."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
