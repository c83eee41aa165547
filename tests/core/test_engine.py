"""The fit engines: each option changes the speed, not the result (up to rounding)."""

from dataclasses import replace

import pytest
import torch

from pipeline.core.engine import ChannelPaddedConv2d, EngineConfig
from pipeline.core.fit import FitConfig, fit
from pipeline.core.metrics import psnr
from pipeline.core.nets import NET_VARIANTS, build_net, grid_size, make_input
from pipeline.core.operators import Denoise

TINY = NET_VARIANTS["tiny"]
H, W = 29, 23  # odd, so the net runs on a larger grid and crops back
CONFIG = FitConfig(iterations=20, lr=0.01, reg_noise_std=1 / 30, ema=0.99, backtrack=True, check_every=10)
PLAIN = EngineConfig.plain()
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def noisy_image() -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    clean = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * yy, 0.7 - 0.4 * xx * yy])[None]  # [1, 3, H, W]
    return clean, Denoise(25).degrade(clean, torch.Generator().manual_seed(0))


def run(engine, device="cpu", config=CONFIG, dtype=torch.float32):
    clean, noisy = noisy_image()
    z = make_input("noise", 32, *grid_size(H, W, TINY.depth), torch.Generator().manual_seed(0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_net(TINY)
    return fit(net, z, Denoise(), noisy, config, reference=clean, seed=0, device=device, dtype=dtype, engine=engine)


def max_diff(a, b) -> float:
    return (a.image - b.image).abs().max().item()


def test_presets():
    assert PLAIN == EngineConfig(host_sync_every_iteration=True)
    assert EngineConfig.fast("cpu") == EngineConfig()  # on 2 CPU cores every option was slower or no faster
    fast_cuda = EngineConfig.fast("cuda")
    assert fast_cuda.autocast_bf16 and fast_cuda.channels_last and fast_cuda.compile
    assert fast_cuda.fused_adam and fast_cuda.cudnn_benchmark and not fast_cuda.host_sync_every_iteration
    assert fast_cuda.cuda_graphs
    assert not fast_cuda.without("compile").cuda_graphs and fast_cuda.without("fused_adam").compile


def test_cuda_graphs_need_compile():
    with pytest.raises(ValueError, match="cuda_graphs needs compile=True"):
        run(replace(PLAIN, cuda_graphs=True))


def test_exact_options_on_the_cpu_give_the_plain_result():
    # No host sync, fused Adam (CUDA only: the default Adam here) and cudnn.benchmark (CUDA only)
    # change nothing on the CPU; engine=None is EngineConfig.fast("cpu").
    plain = run(PLAIN)
    for engine in (EngineConfig(), replace(PLAIN, fused_adam=True), replace(PLAIN, cudnn_benchmark=True), None):
        assert torch.equal(run(engine).image, plain.image), engine


def test_channels_last_matches_plain():
    plain, fast = run(PLAIN), run(replace(PLAIN, channels_last=True))
    assert max_diff(plain, fast) < 1e-4
    assert [e["iteration"] for e in fast.history] == [10, 20]


def test_bf16_autocast_is_close_to_plain():
    plain, fast = run(PLAIN), run(replace(PLAIN, autocast_bf16=True))
    assert psnr(fast.image, plain.image) > 30
    assert fast.history[-1]["loss"] == pytest.approx(plain.history[-1]["loss"], rel=0.1)


def test_align_channels_pads_the_merge_convolutions_and_keeps_the_padding_at_zero():
    clean, noisy = noisy_image()
    z = make_input("noise", 32, *grid_size(H, W, TINY.depth), torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = build_net(TINY)
    aligned = fit(net, z, Denoise(), noisy, CONFIG, reference=clean, engine=replace(PLAIN, align_channels=8))
    padded = [m for m in net.modules() if isinstance(m, ChannelPaddedConv2d)]
    # The tiny net merges 16 + 4 = 20 channels at each of its 3 scales: padded to 24.
    assert [(m.weight.shape[1], m.extra) for m in padded] == [(24, 4)] * 3
    assert all(torch.count_nonzero(m.weight[:, -m.extra:]) == 0 for m in padded)  # 20 Adam steps later
    assert max_diff(aligned, run(PLAIN)) < 1e-4


def test_bad_align_channels_is_named():
    with pytest.raises(ValueError, match="align_channels must be an int >= 1, got 0"):
        run(replace(PLAIN, align_channels=0))


def test_bf16_autocast_needs_float32():
    with pytest.raises(ValueError, match="autocast_bf16 needs dtype torch.float32, got torch.float64"):
        run(replace(PLAIN, autocast_bf16=True), dtype=torch.float64)


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(fn, *args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="torch.compile failed, the fit runs eager: RuntimeError: no compiler"):
        fast = run(replace(PLAIN, compile=True))
    assert torch.equal(fast.image, run(PLAIN).image)


class _BackwardFails(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss):
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward compile failed")


def test_a_failing_compiled_backward_falls_back_to_eager(monkeypatch):
    # The trial forward runs (BatchNorm's running statistics move), then its backward fails: the
    # fit must fall back and start from the untouched net.
    def compile_with_failing_backward(fn, *args, **kwargs):
        def compiled(z):
            x, loss = fn(z)
            return x, _BackwardFails.apply(loss)
        return compiled

    monkeypatch.setattr(torch, "compile", compile_with_failing_backward)
    with pytest.warns(RuntimeWarning, match="backward compile failed"):
        fast = run(replace(PLAIN, compile=True))
    assert torch.equal(fast.image, run(PLAIN).image)


@pytest.mark.compile
def test_compile_matches_plain():
    # torch.compile (inductor, a C++ compiler) on the CPU: about 70 s on 2 cores.
    plain, fast = run(PLAIN), run(replace(PLAIN, compile=True))
    assert max_diff(plain, fast) < 1e-3


@pytest.mark.slow
def test_compiled_channel_alignment_matches_plain():
    # The padded convolutions (F.pad + F.conv2d) through inductor: another ~70 s compile.
    plain, fast = run(PLAIN), run(replace(PLAIN, compile=True, align_channels=8))
    assert max_diff(plain, fast) < 1e-3


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("option", ["host_sync_every_iteration", "channels_last", "fused_adam", "cudnn_benchmark",
                                    "autocast_bf16", "compile", "cuda_graphs", "align_channels", "all"])
def test_each_option_on_cuda_is_close_to_plain(option):
    off = EngineConfig()  # fp32 eager, no per-iteration sync
    if option == "all":
        engine = EngineConfig.fast("cuda")
    elif option == "cuda_graphs":
        engine = replace(off, compile=True, cuda_graphs=True)
    elif option == "align_channels":
        engine = replace(off, align_channels=8)
    else:
        engine = replace(off, **{option: True})
    plain, fast = run(off, device="cuda"), run(engine, device="cuda")
    if option in ("autocast_bf16", "all"):
        assert psnr(fast.image, plain.image) > 30
        assert fast.history[-1]["loss"] == pytest.approx(plain.history[-1]["loss"], rel=0.1)
    else:  # cuDNN picks its algorithms per run, and 20 Adam steps amplify the rounding: close, not equal
        assert psnr(fast.image, plain.image) > 40  # measured on an H200: max pixel differences 1e-3 to 1e-2
        # H200: 2.4% off (channels_last)
        assert fast.history[-1]["loss"] == pytest.approx(plain.history[-1]["loss"], rel=0.05)
