"""Where the files of deepforest's `data/` folder (its NEON sample images and their boxes) come from.

deepforest's own imports need a heavy stack (geopandas, kornia, hydra...), so it is never imported: its `data/`
folder is read from a wheel the user names, else from an installed copy (located, not imported), else from the
wheel that pooch fetches from PyPI into the user's cache, checked against its pinned SHA-256. `xprune.data.trees`
builds its dataset from them.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

from xprune.errors import XpruneError

DEEPFOREST_VERSION = "2.1.0"
WHEEL_NAME = f"deepforest-{DEEPFOREST_VERSION}-py3-none-any.whl"
# The wheel's file on PyPI and its SHA-256, as PyPI's simple index lists them (the `#sha256=` of its link).
WHEEL_URL = ("https://files.pythonhosted.org/packages/b7/a8/"
             f"67e66685c81ec070372db546f933312c6d7401f845e200e5d900107ff51e/{WHEEL_NAME}")
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"


class SampleData:
    """Read access to the files of deepforest/data, wherever they are."""

    origin: str
    version: str | None

    def read(self, name: str) -> bytes:
        raise NotImplementedError


class FolderData(SampleData):
    def __init__(self, root: str | Path, origin: str | None = None, version: str | None = None):
        self.root = Path(root)
        self.origin = origin or str(self.root)
        self.version = version

    def read(self, name: str) -> bytes:
        path = self.root / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise XpruneError(f"deepforest sample file missing: {name} (not in {self.root})") from None
        except OSError as e:
            raise XpruneError(f"cannot read deepforest sample file {path}: {e.strerror or e}") from None


class WheelData(SampleData):
    """The files straight from a deepforest wheel (a zip), without installing it."""

    PREFIX = "deepforest/data/"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise XpruneError(f"deepforest wheel not found: {self.path}")
        try:
            self.zip = zipfile.ZipFile(self.path)
            names = self.zip.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise XpruneError(f"{self.path} is not a readable wheel: {e}") from None
        if not any(n.startswith(self.PREFIX) for n in names):
            raise XpruneError(f"{self.path} is not a deepforest wheel (no {self.PREFIX} inside)")
        self.version = self._wheel_version(names)
        self.origin = f"wheel {self.path}"

    def _wheel_version(self, names: list[str]) -> str | None:
        for n in names:
            if n.startswith("deepforest-") and n.endswith(".dist-info/METADATA"):
                for line in self.zip.read(n).decode("utf-8", "replace").splitlines():
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
        return None

    def read(self, name: str) -> bytes:
        try:
            return self.zip.read(self.PREFIX + name)
        except KeyError:
            raise XpruneError(f"deepforest sample file missing: {name} (not in {self.path})") from None
        except (zipfile.BadZipFile, zlib.error, OSError) as e:
            raise XpruneError(f"deepforest sample file {name} in {self.path} is corrupt: {e}") from None


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xprune"


def installed_data_folder() -> Path | None:
    """deepforest/data of an installed deepforest, found without importing the package."""
    try:
        spec = find_spec("deepforest")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if (Path(location) / "data").is_dir():
            return Path(location) / "data"
    return None


def _installed_version() -> str | None:
    try:
        return metadata.version("deepforest")
    except metadata.PackageNotFoundError:
        return None


def _one_line_reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def download_wheel(cache_dir: Path, timeout_s: float = 600) -> Path:
    """The deepforest wheel in `cache_dir`, fetched by pooch when absent or not the pinned file (pooch downloads to
    a temporary name, checks the SHA-256, then renames, so the cache never holds a partial or foreign wheel)."""
    hint = "pass --wheel PATH to a downloaded wheel"
    try:
        import pooch
    except ImportError:
        raise XpruneError(f"deepforest sample data not found: fetching it needs pooch (pip install pooch); {hint}") \
            from None
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)  # its "Downloading ..." lines: the command's output is one line
    try:
        path = pooch.retrieve(WHEEL_URL, known_hash=f"sha256:{WHEEL_SHA256}", fname=WHEEL_NAME, path=cache_dir,
                              downloader=pooch.HTTPDownloader(progressbar=False, timeout=timeout_s))
    except (OSError, ValueError) as e:  # requests' errors are OSErrors; a hash mismatch is a ValueError
        raise XpruneError(f"deepforest sample data not found: cannot download {WHEEL_NAME} from PyPI "
                          f"({type(e).__name__}: {_one_line_reason(e)}); {hint}") from None
    finally:
        logger.setLevel(level)
    return Path(path)


def locate_sample_data(wheel: str | Path | None = None, cache_dir: str | Path | None = None) -> SampleData:
    """deepforest/data from, in order: the wheel the user named, an installed deepforest, the cached or downloaded
    wheel. An explicit wheel comes first so that the user's choice is never silently replaced."""
    if wheel is not None:
        return WheelData(wheel)
    folder = installed_data_folder()
    if folder is not None:
        version = _installed_version()
        label = f"deepforest {version}" if version else "deepforest"
        return FolderData(folder, origin=f"installed {label} at {folder}", version=version)
    return WheelData(download_wheel(Path(cache_dir) if cache_dir else default_cache_dir()))


__all__ = ["DEEPFOREST_VERSION", "WHEEL_NAME", "WHEEL_SHA256", "WHEEL_URL", "FolderData", "SampleData", "WheelData",
           "default_cache_dir", "download_wheel", "installed_data_folder", "locate_sample_data"]
