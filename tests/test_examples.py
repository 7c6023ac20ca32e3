import pathlib
import runpy
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_progressive_fade_example_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["progressive_fade.py", "--impl", "cpu", "--steps", "3"])
    runpy.run_path(str(EXAMPLES / "progressive_fade.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "step   2  alpha 0.667" in out
