"""Video pipelines: run.num_frames / run.fps checked against the pipeline (refused on an image
pipeline, rounded to the family's frame rule with a note), the video table kept honest by the
installed diffusers, `qconf run` writing a 5-frame video and recording it, `qconf compare` over
two tiny-wan plans scoring every frame, and the measuring default, on every tiny video family
(tiny-wan, tiny-wan22, tiny-ltx) through real loads with few frames and steps."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
from PIL import Image
from qconf_driver import TORCH_FREE, errors
from qconf_driver import qconf as cli

import qconf
from qconf.errors import PlanError
from qconf.plan.intake import intake
from qconf.source.table import load_table
from qconf.source.video import VIDEO_PIPELINES, frame_step, measuring_frames, measuring_run


def test_the_video_table_matches_the_installed_diffusers() -> None:
    """Each class's `__call__` num_frames default (CogVideoX: its transformer's sample_frames)
    and frame-rate keyword default are the table's; every class is a known pipeline."""
    import diffusers

    for name, rule in VIDEO_PIPELINES.items():
        assert name in load_table()
        call = inspect.signature(getattr(diffusers, name).__call__).parameters
        default = call["num_frames"].default
        if default is None:  # CogVideoX: from the transformer's config
            init = inspect.signature(diffusers.CogVideoXTransformer3DModel.__init__).parameters
            default = init["sample_frames"].default
        assert (default - 1) % rule.step == 0, name  # the default is itself a legal count
        assert default == rule.default_frames, name
        if rule.fps_argument is not None:
            assert call[rule.fps_argument].default == rule.fps, name
        else:
            assert "frame_rate" not in call and "fps" not in call, name


def test_frame_rules_round_to_the_nearest_legal_count() -> None:
    wan, ltx = VIDEO_PIPELINES["WanPipeline"], VIDEO_PIPELINES["LTXPipeline"]
    assert [wan.legal(n) for n in (1, 2, 3, 5, 6, 7, 8, 81)] == [1, 1, 5, 5, 5, 9, 9, 81]
    assert [ltx.legal(n) for n in (5, 9, 12, 13, 161)] == [9, 9, 9, 17, 161]
    assert (wan.measuring(), ltx.measuring(), ltx.measuring(step=4)) == (5, 9, 5)


def test_num_frames_on_an_image_pipeline_is_one_line_exit_2(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as caught:
        intake(overrides=["model=tiny-flux", "run.num_frames=5", "run.fps=8"])
    assert [p.where for p in caught.value.problems] == ["run.num_frames", "run.fps"]
    assert "FluxPipeline makes images, not video" in caught.value.problems[0].what
    for command in ("validate", "run"):
        result = cli(command, "model=tiny-flux", "run.num_frames=5", cwd=tmp_path)
        assert result.returncode == 2
        assert errors(result) == [
            "error: run.num_frames: FluxPipeline makes images, not video — remove "
            "run.num_frames (it applies to WanPipeline, LTXPipeline, HunyuanVideoPipeline, "
            "CogVideoXPipeline)"
        ]
        assert result.stdout.strip().endswith(TORCH_FREE)
    assert not any(tmp_path.iterdir())  # no run folder either


def test_video_settings_validate_and_are_bounded() -> None:
    plan = intake(overrides=["model=tiny-wan", "run.num_frames=6", "run.fps=8"])
    assert (plan.run.num_frames, plan.run.fps) == (6, 8)  # validation checks, never rounds
    with pytest.raises(PlanError, match="run.num_frames: Input should be greater"):
        intake(overrides=["model=tiny-wan", "run.num_frames=0"])
    with pytest.raises(PlanError, match="run.fps: Input should be less"):
        intake(overrides=["model=tiny-wan", "run.fps=1000"])


def test_the_measuring_default_follows_each_family_rule() -> None:
    """5 frames where frames are 4k+1; LTX-Video's released VAE (8x in time: the family's rule,
    and its shipped config snapshot) gives 9; a count the user sets
    is kept (rounded to the rule)."""
    for model in ("tiny-wan", "tiny-wan22", "tiny-ltx"):
        plan = intake(overrides=[f"model={model}"])
        assert measuring_frames(plan.source, None) == 5
        assert measuring_run(plan).num_frames == 5
    snapshot = Path(qconf.__file__).parent / "data" / "snapshots" / "Lightricks--LTX-Video"
    for overrides in (["model=ltx"], [f"model.source={snapshot}", "model.pipeline=null"]):
        ltx = intake(overrides=overrides)  # the family's rule; the VAE's config.json when read
        assert (frame_step(ltx.source), measuring_frames(ltx.source, None)) == (8, 9)
        assert measuring_frames(ltx.source, 12) == 9
    for model in ("wan21", "hunyuanvideo", "cogvideox"):
        assert measuring_frames(intake(overrides=[f"model={model}"]).source, None) == 5
    flux = intake(overrides=["model=tiny-flux"])
    assert measuring_frames(flux.source, None) is None and measuring_run(flux) is flux.run


@pytest.mark.parametrize("model", ["tiny-wan22", "tiny-ltx"])
def test_each_tiny_video_family_makes_the_frames_asked(
    model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real load: 5 frames asked, 5 made; 6 asked, 5 made and a note says why; the loaded
    pipeline's own frame rule is the one qconf knows without torch."""
    from qconf.run.generate import generate
    from qconf.run.video import pipeline_step

    plan = intake(overrides=[f"model={model}", "quant.mapping.transformer=int8wo"])  # 2 steps:
    # LTX's scheduler (shift_terminal) divides by zero on one step
    with qconf.quiet():
        pipeline = qconf.load(plan).pipeline
    pipeline.set_progress_bar_config(disable=True)
    rule = VIDEO_PIPELINES[type(pipeline).__name__]
    assert pipeline_step(pipeline, rule) == frame_step(plan.source) == 4
    for asked in (5, 6):
        made = generate(pipeline, plan.run.model_copy(update={"num_frames": asked}))
        assert made[0].frames is not None and len(made[0].frames) == 5
        assert made[0].image.size == (32, 32) and made[0].fps == rule.fps
    assert f"note: run.num_frames=6 made 5 frames: {type(pipeline).__name__} makes 4k+1 frames" in (
        capsys.readouterr().err
    )


def test_run_on_tiny_wan_writes_a_5_frame_video_and_records_it(tmp_path: Path) -> None:
    result = cli("run", "model=tiny-wan", "quant.mapping.transformer=int8wo",
                 "run.num_frames=5", "hydra.run.dir=out", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    with Image.open(out / "video.webp") as video:
        assert (video.format, video.n_frames, video.size) == ("WEBP", 5, (32, 32))
        video.load()
        assert video.info["duration"] == round(1000 / 16)  # Wan's 16 fps
    run = json.loads((out / "report.json").read_text())["run"]
    assert (run["frames"], run["fps"], run["video_format"]) == (5, 16, "webp")
    assert run["images"][0] | {"seconds": 0} == {
        "file": "image.png", "video": "video.webp", "frames": 5, "seconds": 0,
        "prompt": "a photo of a cat wearing a tiny hat", "seed": 0,
    }  # fmt: skip
    assert run["seconds_per_frame"] == pytest.approx(run["images"][0]["seconds"] / 5, abs=1e-3)
    assert run["peak_memory_bytes"] > 0
    with Image.open(out / "image.png") as first:  # the first frame, for image tools
        assert first.size == (32, 32)
    assert "video.webp" in result.stdout


def test_compare_on_tiny_wan_scores_every_frame_of_two_plans(tmp_path: Path) -> None:
    result = cli("compare", "--no-baseline", "model=tiny-wan", "run.steps=1",
                 "quant.mapping.transformer=null,int8wo", "hydra.sweep.dir=sweep",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "video: measured on 5 frames" in result.stderr
    sweep = tmp_path / "sweep"
    runs = json.loads((sweep / "compare.json").read_text())["runs"]
    reference, quantized = runs
    assert reference["psnr"] == math.inf and reference["ssim"] == 1.0
    assert 20 < quantized["psnr"] < math.inf and 0.5 < quantized["ssim"] < 1.0
    assert quantized["worst_frame_psnr"] <= quantized["psnr"]
    assert quantized["worst_frame_ssim"] <= quantized["ssim"]
    assert 0 < quantized["temporal_difference"] < 0.1
    assert quantized["images"][0]["frames"] == 5 and quantized["fps"] == 16
    markdown = (sweep / "compare.md").read_text()
    assert "[0/video.webp](0/video.webp)" in markdown and "[1/video.webp](1/video.webp)" in markdown
    with Image.open(sweep / "compare.png") as grid:  # three frames per cell: a wide picture
        assert grid.size[0] > grid.size[1]
    # A video that lost a frame is refused in one line when the folder is gathered again.
    Image.open(sweep / "1" / "image.png").save(sweep / "1" / "video.webp", format="WEBP")
    again = cli("compare", "sweep", cwd=tmp_path)
    assert again.returncode == 2
    assert errors(again) == [
        f"error: {sweep / '1' / 'video.webp'}: holds 1 frames, report.json lists 5 — re-run "
        "that job"
    ]


def test_a_video_with_repeated_frames_reads_back_frame_for_frame(tmp_path: Path) -> None:
    """libwebp stores a frame equal to the one before as one longer frame: reading by duration
    gives every frame back, exactly (lossless)."""
    import numpy as np

    from qconf.compare.metrics import image_tensor, video_frames
    from qconf.run.video import encode_video

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]
    frames = [frames[0], frames[1], frames[1], frames[2], frames[3]]  # frame 2 repeats frame 1
    (tmp_path / "video.webp").write_bytes(encode_video(frames, 16))
    with Image.open(tmp_path / "video.webp") as stored:
        assert stored.n_frames == 4
    read = list(video_frames(tmp_path / "video.webp", (16, 16), 5))
    assert len(read) == 5
    assert all(bool((a == image_tensor(b)).all()) for a, b in zip(read, frames, strict=True))
