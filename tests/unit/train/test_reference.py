"""Reference bookkeeping: checkpoints in the package or the cache, found only when their recorded hash matches."""

import json

import pytest

import xprune.reference as reference
from xprune.errors import XpruneError
from xprune.files import file_sha256
from xprune.train.reference import dataset_stamp


def _record(folder, model, stored, sha):
    (folder / f"{model}-synth.json").write_text(json.dumps(
        {"model": model, "checkpoint": f"{model}-synth.pt", "stored": stored, "sha256": sha}))


def test_cached_checkpoints_are_found_by_hash(tmp_path, monkeypatch):
    package, cache = tmp_path / "package", tmp_path / "cache"
    package.mkdir()
    monkeypatch.setattr(reference, "HERE", package)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    (package / "small-synth.pt").write_bytes(b"weights")
    _record(package, "small", "package", file_sha256(package / "small-synth.pt"))
    (cache / "xprune" / "reference").mkdir(parents=True)
    big = cache / "xprune" / "reference" / "big-synth.pt"
    big.write_bytes(b"big weights")
    _record(package, "big", "cache", file_sha256(big))
    _record(package, "absent", "cache", "0" * 64)

    found = reference.reference_models()
    assert set(found) == {"small", "big"} and found["big"]["path"] == str(big)
    assert set(reference.reference_infos()) == {"small", "big", "absent"}  # what --train-missing would train
    big.write_bytes(b"other weights")  # a stale or foreign file in the cache is not the measured one
    assert set(reference.reference_models()) == {"small"}


def test_dataset_stamp_names_the_generator(tmp_path, synth_data):
    assert dataset_stamp(synth_data)[0] == "synth"
    with pytest.raises(XpruneError, match="not written by `xprune data synth`"):
        dataset_stamp(tmp_path)
