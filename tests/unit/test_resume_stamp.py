"""The one resume mechanism: a stamp beside a state or output names the inputs that made it; the same inputs
resume, others are refused in one line (or forgotten, for outputs cheap to rebuild), and a finished stage leaves
nothing to resume."""

import json

import numpy as np
import pytest
import torch

from xprune.errors import XpruneError
from xprune.files import file_sha256
from xprune.resume import Stamp, arrays_sha256, first_difference, input_identity, json_sha256, plain


def _identity(lr=5e-4, **digests):
    return input_identity({"epochs": 5, "lr": lr}, **digests)


def test_a_fresh_claim_records_the_identity_and_resumes_nothing(tmp_path):
    stamp = Stamp(tmp_path / "state.json", _identity(), "training state")
    assert stamp.recorded() is None and not stamp.matches()
    assert stamp.claim([tmp_path / "state.pt"]) is False
    assert json.loads((tmp_path / "state.json").read_text()) == _identity() and stamp.matches()


def test_the_same_inputs_resume_from_their_state(tmp_path):
    state = tmp_path / "state.pt"
    Stamp(tmp_path / "state.json", _identity(), "training state").claim([state])
    state.write_bytes(b"tensors")
    assert Stamp(tmp_path / "state.json", _identity(), "training state").claim([state]) is True
    # every resumable file must be there: a state that is gone starts over under the same record
    assert Stamp(tmp_path / "state.json", _identity(), "training state").claim([state, tmp_path / "gone.pt"]) is False


def test_another_runs_state_is_refused_in_one_line_naming_what_differs(tmp_path):
    state = tmp_path / "state.pt"
    Stamp(tmp_path / "state.json", _identity(), "training state").claim([state])
    state.write_bytes(b"tensors")
    with pytest.raises(XpruneError, match=r"holds the training state of another run \(its settings.lr differs\)") as e:
        Stamp(tmp_path / "state.json", _identity(lr=1e-3), "training state").claim([state])
    assert "\n" not in str(e.value)
    assert json.loads((tmp_path / "state.json").read_text()) == _identity()  # the refused run recorded nothing


def test_a_state_without_a_record_is_refused(tmp_path):
    state = tmp_path / "state.pt"
    state.write_bytes(b"tensors")
    with pytest.raises(XpruneError, match="a training state with no record of its inputs"):
        Stamp(tmp_path / "state.json", _identity(), "training state").claim([state])
    (tmp_path / "state.json").write_text("{not json")  # an unreadable record is no record
    with pytest.raises(XpruneError, match="no record of its inputs"):
        Stamp(tmp_path / "state.json", _identity(), "training state").claim([state])


def test_a_record_of_other_inputs_without_its_state_starts_over(tmp_path):
    Stamp(tmp_path / "state.json", _identity(), "training state").claim([tmp_path / "state.pt"])
    stamp = Stamp(tmp_path / "state.json", _identity(lr=1e-3), "training state")
    assert stamp.claim([tmp_path / "state.pt"]) is False and stamp.matches()


def test_an_output_of_other_inputs_is_forgotten_when_not_refused(tmp_path):
    out = tmp_path / "out.json"
    assert Stamp(out, _identity(), "dataset").claim() is False
    assert Stamp(out, _identity(), "dataset").claim() is True  # no resumable files: the record alone is the output
    with pytest.raises(XpruneError, match=r"dataset of another run \(its settings.lr differs\)"):
        Stamp(out, _identity(lr=1e-3), "dataset").claim()
    forgetting = Stamp(out, _identity(lr=1e-3), "dataset")
    assert forgetting.claim(refuse=False) is False and forgetting.matches()


def test_release_removes_the_states_and_the_record(tmp_path):
    state, other = tmp_path / "state.pt", tmp_path / "other.pt"
    stamp = Stamp(tmp_path / "state.json", _identity(), "training state")
    stamp.claim([state])
    state.write_bytes(b"tensors")
    stamp.release(state, other)  # a state that was never written is no error
    assert sorted(tmp_path.iterdir()) == []
    assert stamp.claim([state]) is False  # nothing left to resume


def test_first_difference_names_the_first_differing_key_path():
    old = {"settings": {"epochs": 5, "lr": 5e-4}, "files": {"weights": "a"}}
    assert first_difference(old, json.loads(json.dumps(old))) is None
    assert first_difference(old, {**old, "files": {"weights": "b"}}) == "files.weights"
    assert first_difference(old, {**old, "settings": {"epochs": 6, "lr": 1.0}}) == "settings.epochs"  # sorted keys
    assert first_difference(old, {"settings": old["settings"]}) == "files"  # a key only one side has
    assert first_difference(old, {**old, "layers": ["a"]}) == "layers"
    assert first_difference({"layers": ["a"]}, {"layers": ["a", "b"]}) == "layers"  # lists compare whole
    assert first_difference(1, 2) == "" and first_difference("a", "a") is None


def test_identities_are_plain_json_with_file_and_array_digests(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    identity = input_identity({"size": (320, 320), "out": tmp_path}, files={"weights": weights, "none": None},
                              model=arrays_sha256([("w", np.ones(3))]))
    assert identity == {"settings": {"size": [320, 320], "out": str(tmp_path)},
                        "files": {"weights": file_sha256(weights), "none": None}, "model": identity["model"]}
    assert plain(identity) == identity
    # a torch tensor and the numpy array of the same bytes hash alike; names and values both count
    assert arrays_sha256([("w", torch.ones(3, dtype=torch.float64))]) == identity["model"]
    assert arrays_sha256([("v", np.ones(3))]) != identity["model"] != arrays_sha256([("w", np.zeros(3))])
    assert json_sha256({"a": 1, "b": (1, 2)}) == json_sha256({"b": [1, 2], "a": 1})
