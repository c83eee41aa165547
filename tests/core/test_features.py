import pytest
import torch

from pipeline.core.features import ARCHITECTURES, feature_extractor, layer_names


def _image(size=64, seed=0):
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "arch, layer, channels",
    [
        ("alexnet", "conv1", 64), ("alexnet", "pool2", 192), ("alexnet", "conv5", 256),
        ("alexnet", "pool5", 256), ("alexnet", "fc6", 4096), ("alexnet", "relu7", 4096),
        ("alexnet", "fc8", 1000),
        ("vgg16", "conv1_1", 64), ("vgg16", "relu2_2", 128), ("vgg16", "relu4_3", 512),
        ("vgg16", "pool5", 512),
        ("vgg19", "conv3_4", 256), ("vgg19", "relu5_4", 512),
    ],
)  # fmt: skip
def test_random_extractors_give_the_expected_channels(arch, layer, channels):
    out = feature_extractor(arch, layer, "random")(_image())
    assert out.shape[:2] == (2, channels) and torch.isfinite(out).all()


def test_torchvision_state_dict_keys_and_shapes():
    # Built on the meta device: no memory for VGG's 100M classifier weights.
    with torch.device("meta"):
        alexnet = feature_extractor("alexnet", "fc8", "random").state_dict()
        vgg16 = feature_extractor("vgg16", "fc8", "random").state_dict()
        vgg19 = feature_extractor("vgg19", "pool5", "random").state_dict()
    assert {k: tuple(v.shape) for k, v in alexnet.items() if k.endswith("weight")} == {
        "features.0.weight": (64, 3, 11, 11), "features.3.weight": (192, 64, 5, 5),
        "features.6.weight": (384, 192, 3, 3), "features.8.weight": (256, 384, 3, 3),
        "features.10.weight": (256, 256, 3, 3), "classifier.1.weight": (4096, 9216),
        "classifier.4.weight": (4096, 4096), "classifier.6.weight": (1000, 4096),
    }  # fmt: skip
    vgg16_convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert [k for k in vgg16 if k.endswith("weight")] == (
        [f"features.{i}.weight" for i in vgg16_convs]
        + [f"classifier.{i}.weight" for i in (0, 3, 6)]
    )
    assert tuple(vgg16["classifier.0.weight"].shape) == (4096, 25088)
    assert list(vgg19)[-1] == "features.34.bias" and len(vgg19) == 32


def test_layer_names():
    first = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2"]
    assert list(layer_names("alexnet"))[:6] == first
    assert layer_names("alexnet")["pool5"] == ("features", 12)
    assert layer_names("alexnet")["fc6"] == ("classifier", 1)
    assert layer_names("vgg16")["relu4_3"] == ("features", 22)
    assert layer_names("vgg19")["conv5_4"] == ("features", 34)
    assert set(ARCHITECTURES) == {"alexnet", "vgg16", "vgg19"}


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a = feature_extractor("alexnet", "conv2", "random", seed=3)
    b = feature_extractor("alexnet", "conv2", "random", seed=3)
    c = feature_extractor("alexnet", "conv2", "random", seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    """A full AlexNet state dict saved like torchvision's file (all keys), seed 5."""
    path = tmp_path_factory.mktemp("weights") / "alexnet.pth"
    torch.save(feature_extractor("alexnet", "fc8", "random", seed=5).state_dict(), path)
    return path


@pytest.mark.parametrize("layer", ["relu3", "fc7"])
def test_saved_state_dict_reloads_with_identical_outputs(alexnet_file, layer):
    reference = feature_extractor("alexnet", layer, "random", seed=5)
    loaded = feature_extractor("alexnet", layer, weights=str(alexnet_file), seed=99)
    assert all(p.device.type == "cpu" and not p.requires_grad for p in loaded.parameters())
    x = _image(67)  # odd size: the adaptive avgpool takes any size >= 63
    assert torch.equal(loaded(x), reference(x))


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(feature_extractor("vgg16", "conv1_2", "random").state_dict(), path)
    with pytest.raises(ValueError, match="missing keys"):
        feature_extractor("vgg16", "conv2_1", weights=path)
    with pytest.raises(ValueError, match="do not fit alexnet"):
        feature_extractor("alexnet", "conv1", weights=path)


def test_missing_weights_file_names_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "alexnet.pth"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        feature_extractor("alexnet", "conv1", weights=missing)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=r"hub/checkpoints/vgg19-dcbb9e9d\.pth.*downloaded"):
        feature_extractor("vgg19", "conv1_1")


def test_cached_torchvision_file_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    model = feature_extractor("alexnet", "conv1", "random", seed=7)
    torch.save(model.state_dict(), tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth")
    assert torch.equal(feature_extractor("alexnet", "conv1").features[0].weight,
                       model.features[0].weight)  # fmt: skip


def test_unknown_names_are_listed():
    with pytest.raises(ValueError, match=r"'resnet50'.*alexnet, vgg16, vgg19"):
        feature_extractor("resnet50", "conv1", "random")
    with pytest.raises(ValueError, match=r"'conv6' for alexnet.*conv1, relu1"):
        feature_extractor("alexnet", "conv6", "random")
    with pytest.raises(ValueError, match=r"'conv5_4' for vgg16"):
        feature_extractor("vgg16", "conv5_4", "random")


def test_frozen_parameters_but_gradients_reach_the_input():
    model = feature_extractor("alexnet", "fc6", "random")
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    x = _image(63).requires_grad_(True)
    model(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_inputs_are_checked():
    model = feature_extractor("vgg16", "pool5", "random")
    with pytest.raises(ValueError, match=r"needs H, W >= 32, got 31x40"):
        model(torch.rand(1, 3, 31, 40))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\], got \[1, 1, 40, 40\]"):
        model(torch.rand(1, 1, 40, 40))
