"""Guidance distillation (`symdiff train --distill RELEASE`): the loss, the teacher, training,
resuming, the exported release and the command line's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import run_cli  # tests/, beside this file
from symdiff_cli.engine.distillation import load_teacher
from symdiff_cli.engine.release import load_release, save_release
from symdiff_cli.engine.release_config import Guide
from symdiff_cli.errors import SymdiffError
from symdiff_cli.model.config import model_config_from_preset
from symdiff_cli.model.diffusion import Batch, NoiseSchedule, VPDiffusion
from symdiff_cli.model.dit import SymmetrisedDenoiser
from symdiff_cli.model.geometry import remove_mean, rotate, sample_haar_orthogonal


def perturbed(seed: int, scale: float = 0.05) -> SymmetrisedDenoiser:
    torch.manual_seed(seed)
    model = SymmetrisedDenoiser(model_config_from_preset("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


@pytest.fixture()
def guided_release(tmp_path) -> Path:
    """A tiny release guided at weight 3 on timesteps <= 400."""
    main, guide = perturbed(0), perturbed(5)
    path = tmp_path / "teacher"
    save_release(path, main.cfg, main.state_dict(), {5: 2, 6: 2, 7: 1}, "qm9", {"step": 0}, default_steps_cpu=4,
                 guide=Guide.single(main.cfg, guide.state_dict(), 3.0, {"release": "tiny-guide"}),
                 sampling={"guidance_max_t": 400})
    return path


class Recording(torch.nn.Module):
    """A deterministic stand-in denoiser (a fixed function of its inputs) that records timesteps."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale, self.seen = scale, []

    def forward(self, x, h, t, mask=None, **kwargs):
        self.seen.append(t.clone())
        return self.scale * x, self.scale * h + t.view(-1, 1, 1).to(h.dtype) / 1000


def toy_batch(b: int = 64, n: int = 5) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(remove_mean(torch.randn(b, n, 3, generator=g)), torch.randn(b, n, 6, generator=g), None)


def test_loss_is_zero_for_the_teachers_own_function_and_positive_otherwise():
    diffusion = VPDiffusion(NoiseSchedule(1000))
    teacher = Recording(0.5)
    same = diffusion.distillation_loss(Recording(0.5), teacher, toy_batch(), torch.Generator().manual_seed(1))
    other = diffusion.distillation_loss(Recording(0.7), teacher, toy_batch(), torch.Generator().manual_seed(1))
    assert float(same) == 0.0 and float(other) > 1e-3


def test_loss_draws_the_stated_share_of_timesteps_inside_the_guided_interval():
    diffusion = VPDiffusion(NoiseSchedule(1000))
    for share, low, high in ((1.0, 1.0, 1.0), (0.0, 0.25, 0.55), (0.8, 0.80, 0.95)):
        teacher = Recording(0.5)
        for seed in range(8):
            diffusion.distillation_loss(Recording(0.5), teacher, toy_batch(256), torch.Generator().manual_seed(seed),
                                        focus_max_t=400, focus_share=share)
        t = torch.cat(teacher.seen)
        inside = float((t <= 400).float().mean())
        # share inside + (1 - share) x 401/1001 from the uniform draws
        assert low <= inside <= high, (share, inside)
    assert int(t.max()) > 400 and int(t.min()) >= 0


def test_teacher_is_the_releases_default_sampler_frozen(guided_release):
    teacher = load_teacher(str(guided_release), torch.device("cpu"))
    assert teacher.guided_max_t == 400
    assert teacher.description == {"release": str(guided_release), "weight": 3.0, "guidance_max_t": 400,
                                   "guides": ["tiny-guide"]}
    assert not any(p.requires_grad for p in teacher.denoiser.parameters())
    release = load_release(str(guided_release), show_progress=False)
    g = torch.Generator().manual_seed(3)
    x = remove_mean(torch.randn(2, 6, 3, generator=g))
    h = torch.randn(2, 6, 6, generator=g)
    t = torch.tensor([300, 900])
    draws = dict(haar=sample_haar_orthogonal(2, generator=torch.Generator().manual_seed(4)),
                 orientation_noise=torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(5)))
    out_x, _ = teacher.denoiser(x, h, t, None, **draws)
    main_x, _ = release.model(x, h, t, None, **draws)
    guide_x, _ = release.guide(x, h, t, None, **draws)
    assert torch.allclose(out_x[0], guide_x[0] + 3.0 * (main_x[0] - guide_x[0]), atol=1e-5)  # guided
    assert torch.equal(out_x[1], main_x[1])  # above the interval: the main network alone


def test_a_release_without_guide_cannot_be_a_teacher(tmp_path):
    model = perturbed(0)
    save_release(tmp_path / "plain", model.cfg, model.state_dict(), {5: 1}, "qm9", {"step": 0})
    with pytest.raises(SymdiffError, match="samples without guidance, so there is nothing to distil"):
        load_teacher(str(tmp_path / "plain"), torch.device("cpu"))


def distil_config(out: Path, data: Path, teacher: Path, **kw):
    from symdiff_cli.engine.train_config import TrainConfig

    base = dict(out=str(out), data=[str(data)], batch_size=16, lr=3e-3, warmup_steps=0, log_every=2,
                ema_decay=0.9, seed=0, threads=1, distill_from=str(teacher))
    base.update(kw)
    return TrainConfig(**base)


def test_distillation_starts_from_the_release_learns_and_resumes_exactly(tmp_path, small_npz, guided_release):
    from symdiff_cli.engine.metrics_log import read_metrics
    from symdiff_cli.engine.train import train

    quiet = dict(console_print=lambda s: None)
    tiny = model_config_from_preset("tiny")
    train(distil_config(tmp_path / "a", small_npz, guided_release, max_steps=6), tiny, **quiet)
    train(distil_config(tmp_path / "b", small_npz, guided_release, max_steps=3), tiny, **quiet)
    # the resumed run is not told its teacher again: it keeps the one in its checkpoint
    train(distil_config(tmp_path / "b", small_npz, guided_release, max_steps=6, distill_from=None), None, **quiet)

    ck_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    ck_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for k in ck_a["ema"]:
        assert torch.equal(ck_a["ema"][k], ck_b["ema"][k]), k
    assert ck_a["train_config"]["init_from"] == str(guided_release)  # the student started as the main network
    assert ck_a["distillation"]["weight"] == 3.0
    release = load_release(str(guided_release), show_progress=False)
    moved = [k for k, v in release.model.state_dict().items() if not torch.equal(v, ck_a["model"][k])]
    assert moved  # it learned something
    losses = [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "loss" in r and "event" not in r]
    assert len(losses) == 3 and all(np.isfinite(losses))

    with pytest.raises(SymdiffError, match="distils .* not "):
        train(distil_config(tmp_path / "b", small_npz, tmp_path / "other", max_steps=8), None, **quiet)


def test_cli_distils_exports_a_guideless_release_that_generates(tmp_path, small_npz, guided_release, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--distill", str(guided_release), "--data", str(small_npz),
                           "--max-steps", "2", "--batch-size", "8", "--quiet", "--threads", "1", "--out", str(run))
    assert code == 0, err
    code, _, err = run_cli(capsys, "convert", str(run / "checkpoint.pt"), str(tmp_path / "student"))
    assert code == 0, err
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert "guidance" not in config
    assert config["provenance"]["distill_from"] == str(guided_release)
    assert config["provenance"]["distillation"]["guides"] == ["tiny-guide"]
    card = (tmp_path / "student" / "README.md").read_text()
    assert "Guidance distillation" in card and "at weight 3" in card and "timesteps <= 400" in card

    student = load_release(str(tmp_path / "student"), show_progress=False)
    assert student.guide is None and student.guidance_weight == 1.0
    # equivariant in distribution like any release: rotating the input with the frame draws
    q = sample_haar_orthogonal(2, generator=torch.Generator().manual_seed(7))
    q[0, :, 0] *= -1
    g = torch.Generator().manual_seed(3)
    x, h = remove_mean(torch.randn(2, 6, 3, generator=g)), torch.randn(2, 6, 6, generator=g)
    frames = sample_haar_orthogonal(2, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([300, 800])
    eps_x, eps_h = student.model(x, h, t, None, haar=frames, orientation_noise=noise)
    eps_qx, eps_qh = student.model(rotate(x, q), h, t, None, haar=q @ frames, orientation_noise=noise)
    assert torch.allclose(rotate(eps_x, q), eps_qx, atol=1e-5) and torch.allclose(eps_h, eps_qh, atol=1e-5)

    outs = []
    for name in ("one", "two"):
        code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "student"), "--n", "3", "--steps", "3",
                               "--seed", "2", "--out", str(tmp_path / f"{name}.xyz"), "--quiet")
        assert code == 0, err
        outs.append((tmp_path / f"{name}.xyz").read_text())
    assert outs[0] == outs[1]  # reproducible


def test_a_student_can_ship_its_teachers_main_network_as_guide(tmp_path, small_npz, guided_release, capsys):
    """The student guided again by the teacher's main network (a release of its own, not the
    student's run) keeps its distillation provenance, samples with the guide, and its card says
    which of the two it does."""
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--distill", str(guided_release), "--data", str(small_npz),
                           "--max-steps", "2", "--batch-size", "8", "--quiet", "--threads", "1", "--out", str(run))
    assert code == 0, err
    code, _, err = run_cli(capsys, "convert", str(run / "checkpoint.pt"), str(tmp_path / "student"),
                           "--guide", str(guided_release), "--guidance", "1.5")
    assert code == 0, err
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["guidance"]["weight"] == 1.5
    assert config["provenance"]["distillation"]["guides"] == ["tiny-guide"]
    card = (tmp_path / "student" / "README.md").read_text()
    assert "steers this learned sampler further" in card and "samples without a guide" not in card
    student = load_release(str(tmp_path / "student"), show_progress=False)
    teacher = load_release(str(guided_release), show_progress=False)
    assert student.guidance_weight == 1.5
    guide = student.guide.members[0] if hasattr(student.guide, "members") else student.guide
    for name, value in teacher.model.state_dict().items():  # the guide is the teacher's main network
        assert torch.equal(guide.state_dict()[name], value)
    code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "student"), "--n", "3", "--steps", "3",
                           "--seed", "2", "--out", str(tmp_path / "guided.xyz"), "--quiet")
    assert code == 0, err


def test_cli_refusals_are_one_line(tmp_path, small_npz, guided_release, capsys):
    plain = perturbed(1)
    save_release(tmp_path / "plain", plain.cfg, plain.state_dict(), {5: 1}, "qm9", {"step": 0})
    common = ["train", "--data", str(small_npz), "--max-steps", "1", "--batch-size", "8", "--quiet", "--threads", "1"]
    code, _, err = run_cli(capsys, *common, "--distill", str(tmp_path / "plain"), "--out", str(tmp_path / "r1"))
    assert code == 1 and "nothing to distil" in err and "Traceback" not in err
    assert not (tmp_path / "r1").exists()
    code, _, err = run_cli(capsys, *common, "--distill", str(guided_release), "--low-noise-fraction", "0.5",
                           "--out", str(tmp_path / "r2"))
    assert code == 2 and "--distill draws its own timesteps" in err
    code, _, err = run_cli(capsys, "train", "--distill", str(guided_release), "--condition", "alpha",
                           "--out", str(tmp_path / "r3"))
    assert code == 2 and "--distill cannot be combined with --condition" in err
