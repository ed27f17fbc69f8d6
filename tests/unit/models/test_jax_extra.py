"""The JAX family without the `jax` extra: listed, and every command that would need JAX fails in one line that
names the extra (simulated by making `import jax` fail, whether or not JAX is installed here)."""

import sys

import pytest

from cli_helpers import one_line_error, run_cli

EXTRA = 'pip install "xprune[jax]"'


@pytest.fixture
def no_jax(monkeypatch):
    for name in ("jax", "flax", "flax.nnx", "optax", "jax2onnx"):
        monkeypatch.setitem(sys.modules, name, None)  # a None entry makes the import raise ImportError


def test_models_lists_tinyssd_jax(no_jax, capsys):
    code, out, _ = run_cli(["models"], capsys)
    line = next(ln for ln in out.splitlines() if ln.startswith("tinyssd-jax "))
    assert code == 0 and " 320 " in line and EXTRA in line


@pytest.mark.parametrize("command", [
    ["score", "--model", "tinyssd-jax", "--weights", "none", "--method", "l1", "--out", "{tmp}/s.json"],
    ["export", "--model", "tinyssd-jax", "--weights", "none", "--out", "{tmp}/m.onnx"],
    ["export", "--model", "tinyssd-jax", "--weights", "{tmp}/m.msgpack", "--out", "{tmp}/m.onnx"],
    ["evaluate", "--model", "tinyssd-jax", "--weights", "{tmp}/m.msgpack", "--data", "{tmp}"],
    ["bench", "{tmp}/m.msgpack", "--out", "{tmp}/r.json"],
])
def test_missing_extra_is_one_line_naming_it(no_jax, command, tmp_path, capsys):
    (tmp_path / "m.msgpack").write_bytes(b"\x80")
    code, _, err = run_cli([a.format(tmp=tmp_path) for a in command], capsys)
    assert code == 2
    assert EXTRA in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.msgpack"]  # nothing written


def test_reference_models_leave_out_what_cannot_run(no_jax):
    from xprune.reference import reference_models

    assert "tinyssd-jax" not in reference_models()
