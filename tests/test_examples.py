"""Each example runs in a smoke mode: a few steps, tiny sizes, outputs written where asked."""

import pathlib
import runpy
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def run_example(monkeypatch, name, *argv):
    monkeypatch.setattr(sys, "argv", [name, *argv])
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_progressive_fade_example_runs(monkeypatch, capsys):
    run_example(monkeypatch, "progressive_fade.py", "--impl", "cpu", "--steps", "3")
    out = capsys.readouterr().out
    assert "step   2  alpha 0.667" in out


def test_train_dcgan_smoke_and_resume(monkeypatch, capsys, tmp_path):
    args = ["--steps", "2", "--batch", "4", "--width", "4", "--dataset-size", "16",
            "--sample-every", "1", "--checkpoint-every", "1", "--out", str(tmp_path)]
    run_example(monkeypatch, "train_dcgan.py", *args)
    assert (tmp_path / "samples_000001.png").exists() and (tmp_path / "losses.png").exists()
    assert (tmp_path / "checkpoint.pt").exists()
    args[1] = "3"
    run_example(monkeypatch, "train_dcgan.py", *args, "--resume")
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 2" in out and "trained to step 3" in out


def test_mode_collapse_smoke(monkeypatch, capsys, tmp_path):
    run_example(monkeypatch, "mode_collapse.py", "--steps", "3", "--batch", "16", "--hidden", "8",
                "--kernels", "4", "--out", str(tmp_path))
    out = capsys.readouterr().out
    assert "plain GAN: covers" in out and "with minibatch discrimination: covers" in out
    assert (tmp_path / "mode_collapse.png").exists()


def test_train_progan_smoke(monkeypatch, capsys, tmp_path):
    run_example(monkeypatch, "train_progan.py", "--smoke", "--out", str(tmp_path))
    out = capsys.readouterr().out
    assert "resolution 16" in out
    assert sorted(p.name for p in tmp_path.glob("samples_*.png")) == ["samples_04.png", "samples_08.png",
                                                                      "samples_16.png"]


def test_examples_with_amp(monkeypatch, capsys, tmp_path):
    """--amp: the DCGAN in bfloat16 and float16 (with a GradScaler), the ProGAN in bfloat16."""
    for amp in ("bf16", "fp16"):
        run_example(monkeypatch, "train_dcgan.py", "--steps", "2", "--batch", "4", "--width", "4", "--dataset-size",
                    "16", "--amp", amp, "--out", str(tmp_path / amp))
    run_example(monkeypatch, "train_progan.py", "--smoke", "--amp", "bf16", "--out", str(tmp_path / "progan"))
    out = capsys.readouterr().out
    assert out.count("trained to step 2") == 2 and "resolution 16" in out


def test_train_dcgan_under_torchrun(tmp_path):
    """2 gloo processes (torchrun), a checkpoint, a resume, and the checkpoint in one process."""
    import os
    import subprocess

    import torch

    from fastgan.models import DCGANDiscriminator, DCGANGenerator

    def torchrun(*extra):
        args = ["--steps", "2", "--batch", "4", "--width", "4", "--dataset-size", "16", "--sample-every", "100",
                "--checkpoint-every", "1", "--out", str(tmp_path), *extra]
        env = dict(os.environ, PYTHONPATH=str(EXAMPLES.parent), OMP_NUM_THREADS="1")
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(EXAMPLES / "train_dcgan.py"), *args], env=env, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    torchrun()
    out = torchrun("--steps", "3", "--resume")
    assert "resumed from" in out and "at step 2" in out and "trained to step 3" in out and "2 process(es)" in out
    assert out.count("trained to step") == 1  # rank 0 alone logs
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    gen, disc = DCGANGenerator(ngf=4, fused=False), DCGANDiscriminator(ndf=4, fused=False)
    gen.load_state_dict(state["G"])  # the single-process keys, plain BatchNorm2d
    disc.load_state_dict(state["D"])
    assert gen.main[1].num_batches_tracked.item() == 3 and disc.main[3].num_batches_tracked.item() == 9
