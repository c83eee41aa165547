from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pipeline.core.images import Picture, read
from pipeline.core.options import Options
from pipeline.core.presets import CPU_SMALL, PAPER, get_preset
from pipeline.core.restore import restore
from pipeline.core.synthetic import synthesize

SAMPLES = Path(__file__).resolve().parents[2] / "pipeline" / "samples"


def picture(pixels, alpha=None):
    return Picture(pixels=pixels, alpha=alpha, bit_depth=8)


def test_denoise_sample_beats_noisy_input_by_several_db():
    synthetic = synthesize(read(SAMPLES / "f16.png"), "noise:25", seed=0)
    result = restore(synthetic.observed, Options(task="denoise", preset=CPU_SMALL), reference=synthetic.reference)
    m = result.metrics
    assert m["psnr"] > m["psnr_input"] + 4, m
    assert 0 < m["ssim"] <= 1
    assert result.picture.pixels.shape == (1, 3, 64, 64)


def test_super_resolution_restores_full_size_and_scores_the_y_channel():
    synthetic = synthesize(read(SAMPLES / "zebra.png"), "downsample:4", seed=0)
    assert synthetic.observed.pixels.shape == (1, 3, 16, 16) and synthetic.scale == 4
    result = restore(synthetic.observed, Options(task="sr", scale=4, preset=CPU_SMALL, iterations=150),
                     reference=synthetic.reference)
    assert result.picture.pixels.shape == (1, 3, 64, 64)
    m = result.metrics
    assert m["psnr_y"] is not None and m["psnr_baseline"] is not None and m["psnr_input"] is None


def test_inpainting_with_the_sample_mask_fills_the_holes():
    clean = read(SAMPLES / "kate.png")
    mask = read(SAMPLES / "kate_mask.png")
    known = mask.pixels > 0.5
    observed = picture(clean.pixels * known)
    result = restore(observed, Options(task="inpaint", preset=CPU_SMALL, iterations=200), mask=mask, reference=clean)
    assert result.metrics["psnr"] > result.metrics["psnr_input"] + 3


def test_grayscale_and_alpha_are_carried_through():
    gray = torch.rand(1, 1, 21, 19)
    alpha = torch.rand(1, 1, 21, 19)
    result = restore(picture(gray, alpha), Options(task="denoise", preset=CPU_SMALL, iterations=5))
    assert result.picture.pixels.shape == (1, 1, 21, 19)
    assert torch.equal(result.picture.alpha, alpha)
    assert result.metrics["psnr"] is None  # no reference, no PSNR


def test_flash_uses_the_guide_as_input_and_needs_it():
    image = torch.rand(1, 3, 20, 22)
    with pytest.raises(ValueError, match="guide"):
        restore(picture(image), Options(task="flash", preset=CPU_SMALL, iterations=2))
    result = restore(picture(image), Options(task="flash", preset=CPU_SMALL, iterations=5), guide=picture(image * 0.5))
    assert result.picture.pixels.shape == image.shape


def test_feature_inversion_with_random_weights_runs():
    image = read(SAMPLES / "f16.png")
    result = restore(image, Options(task="invert", preset=CPU_SMALL, iterations=5, weights="random", layer="conv2"))
    assert result.picture.pixels.shape == image.pixels.shape
    assert result.metrics["psnr"] is not None  # the input image is its own reference


def test_same_seed_gives_the_same_restoration():
    observed = synthesize(read(SAMPLES / "f16.png"), "noise:25", seed=1).observed
    options = Options(task="denoise", preset=CPU_SMALL, iterations=15, seed=7)
    a, b = restore(observed, options), restore(observed, options)
    c = restore(observed, replace(options, seed=8))
    assert torch.equal(a.picture.pixels, b.picture.pixels)
    assert not torch.equal(a.picture.pixels, c.picture.pixels)


def test_early_stop_override_turns_the_detector_on():
    preset = Options(task="denoise", preset=CPU_SMALL, early_stop=True).resolve()
    assert preset.fit.early_stop is not None
    assert Options(task="denoise").resolve().fit.early_stop is None


def test_the_stop_rule_defaults_to_the_discrepancy_rule_for_denoising_only():
    from pipeline.core.presets import DISCREPANCY_MARGIN

    denoise = Options(task="denoise", early_stop=True).resolve().fit.early_stop
    assert (denoise.rule, denoise.margin) == ("discrepancy", DISCREPANCY_MARGIN)
    assert Options(task="denoise", early_stop=True, stop_rule="wmv").resolve().fit.early_stop.rule == "wmv"
    assert Options(task="inpaint", early_stop=True).resolve().fit.early_stop.rule == "wmv"
    small = Options(task="denoise", preset=CPU_SMALL, early_stop=True).resolve().fit.early_stop
    assert (small.rule, small.window, small.patience) == ("discrepancy", 25, 100)


@pytest.mark.parametrize("kwargs,message", [
    (dict(task="deblur"), "deblur"),
    (dict(task="denoise", preset="nope"), "nope"),
    (dict(task="denoise", preset="sr-x4"), "sr-x4"),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Options(**kwargs)


def test_super_resolution_without_a_scale_is_refused():
    with pytest.raises(ValueError, match="needs a scale"):
        restore(picture(torch.rand(1, 3, 8, 8)), Options(task="sr", preset=CPU_SMALL))


def test_unknown_option_names_are_refused():
    with pytest.raises(ValueError, match="'iters'"):
        Options.from_dict({"iters": 5})


def test_mismatched_mask_and_reference_are_named():
    image = picture(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="mask is 8x8 but the image is 16x16"):
        restore(image, Options(task="inpaint", preset=CPU_SMALL), mask=picture(torch.ones(1, 1, 8, 8)))
    with pytest.raises(ValueError, match="reference is 8x8"):
        restore(image, Options(task="denoise", preset=CPU_SMALL), reference=picture(torch.rand(1, 3, 8, 8)))


def test_paper_presets_match_the_paper_table():
    table = {  # name: (iterations, lr, reg_noise_std)
        "denoise": (3000, 0.01, 1 / 30), "sr-x4": (2000, 0.01, 0.03), "sr-x8": (4000, 0.01, 0.05),
        "inpaint-text": (6000, 0.01, 0.03), "inpaint-holes": (5000, 0.01, 0.03),
        "missing-pixels": (11000, 0.001, 0.03), "jpeg": (2400, 0.01, 1 / 30), "flash": (600, 0.1, 0.0),
        "invert": (3100, 0.001, 0.0),
    }
    for name, (iterations, lr, noise) in table.items():
        fit = PAPER[name].fit
        assert (fit.iterations, fit.lr, fit.reg_noise_std) == (iterations, lr, noise), name
    assert PAPER["denoise"].fit.ema == 0.99 and PAPER["denoise"].fit.backtrack
    assert PAPER["inpaint-holes"].input_kind == "meshgrid" and set(PAPER["inpaint-holes"].net.channels_skip) == {0}
    assert PAPER["invert"].net.depth == 6
    assert get_preset("sr", scale=8).name == "sr-x8" and get_preset("sr", scale=4).name == "sr-x4"


def test_restarts_average_the_fits_of_consecutive_seeds():
    from pipeline.core.packed import pack_key

    yy, xx = torch.meshgrid(torch.linspace(0, 1, 24), torch.linspace(0, 1, 24), indexing="ij")
    clean = picture(torch.stack([xx, yy, (xx + yy) / 2])[None])
    noisy = synthesize(clean, "noise:25", seed=0).observed
    options = Options(task="denoise", preset=CPU_SMALL, iterations=30, seed=5)
    fits = [restore(noisy, replace(options, seed=s), reference=clean) for s in (5, 6)]
    averaged = restore(noisy, replace(options, restarts=2), reference=clean)
    torch.testing.assert_close(averaged.picture.pixels, (fits[0].picture.pixels + fits[1].picture.pixels) / 2)
    assert averaged.metrics["restarts"] == 2
    assert averaged.restart_psnr == [f.metrics["psnr"] for f in fits]
    assert averaged.metrics["psnr"] != fits[0].metrics["psnr"]
    assert pack_key(noisy, replace(options, restarts=2)) is None  # restarts are not packed
