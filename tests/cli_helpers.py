"""Running the CLI in-process and checking its one-line errors."""

from xprune.cli import main


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """The only stderr line that is not a progress bar or a progress message; it must come from xprune."""
    lines = [ln for ln in err.splitlines()
             if ln.strip() and "batch/s" not in ln and "%|" not in ln and not ln.startswith(("exporting", "folding"))]
    assert len(lines) == 1, err
    assert lines[0].startswith("xprune")
    return lines[0]
