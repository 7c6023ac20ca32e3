import subprocess
import sys


def test_info_reports_extensions_and_backends():
    out = subprocess.run([sys.executable, "-m", "fastgan.info"], capture_output=True, text=True, check=True).stdout
    assert "torch" in out and "triton" in out
    assert "fastgan._C: built" in out
    from fastgan.info import OPS

    for op in OPS:
        line = next(l for l in out.splitlines() if l.strip().startswith(op))
        assert "reference, cpu, triton" in line, line
