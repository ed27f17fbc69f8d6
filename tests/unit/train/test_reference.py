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


@pytest.mark.slow
def test_a_jax_reference_is_trained_saved_as_msgpack_and_found(tmp_path, monkeypatch):
    pytest.importorskip("optax")
    import xprune.train.reference as train_reference
    from xprune.data.synth import SynthConfig, generate

    data = generate(tmp_path / "data", SynthConfig(image_size=128, train=16, val=4, calib=4))  # one batch of 16

    package = tmp_path / "package"
    package.mkdir()
    monkeypatch.setattr(reference, "HERE", package)
    monkeypatch.setattr(train_reference, "REFERENCE_DIR", package)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    info = train_reference.train_reference("tinyssd-jax", data, epochs=1, size=128, train_images=16,
                                           log=lambda line: None)
    assert info["checkpoint"] == "tinyssd-jax-synth.msgpack" and info["stored"] == "package"
    assert 0.0 <= info["val_map"] <= 1.0 and info["epochs"] == 1
    assert (package / "tinyssd-jax-synth.log").read_text().startswith("epoch 1/1")
    found = reference.reference_models()
    assert found["tinyssd-jax"]["sha256"] == file_sha256(package / "tinyssd-jax-synth.msgpack")


@pytest.mark.slow
def test_an_interrupted_reference_resumes_and_its_log_keeps_every_epoch(tmp_path, monkeypatch):
    import xprune.train.reference as train_reference
    from xprune.data.synth import SynthConfig, generate

    data = generate(tmp_path / "data", SynthConfig(image_size=128, train=16, val=4, calib=4))
    package = tmp_path / "package"
    package.mkdir()
    monkeypatch.setattr(reference, "HERE", package)
    monkeypatch.setattr(train_reference, "REFERENCE_DIR", package)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def stop_after_first_epoch(line: str) -> None:
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt  # after the epoch's state was saved, as a Ctrl-C would land

    with pytest.raises(KeyboardInterrupt):
        train_reference.train_reference("ssdlite320-mbv3", data, epochs=2, size=128, train_images=16,
                                        log=stop_after_first_epoch)
    assert not (package / "ssdlite320-mbv3-synth.json").exists()  # no reference from a half-trained run
    assert not (package / "ssdlite320-mbv3-synth.log").exists()  # its progress log stays in the cache
    seen: list[str] = []
    info = train_reference.train_reference("ssdlite320-mbv3", data, epochs=2, size=128, train_images=16,
                                           log=seen.append)
    assert seen[0].startswith("resuming after epoch 1/2") and info["epochs"] == 2
    assert (info["augment"], info["precision"], info["lr"]) == ("flip", "fp32", 2e-3)  # the recipe is recorded
    log_lines = (package / "ssdlite320-mbv3-synth.log").read_text().splitlines()
    assert [ln.split(" loss")[0] for ln in log_lines] == ["epoch 1/2", "epoch 2/2"]
