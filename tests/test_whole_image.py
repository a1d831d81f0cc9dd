"""Whole-image supervision (reward model v6): version sets, the teacher order loss, head fitting and
the whole-image ranking benchmark's figures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from training.data.sr_pool import ClassicalSR
from training.data.versions import VersionMaker, build, network_family, read_manifest
from training.evaluate_whole_image import kendall_tau, summarize, teacher_agreement
from training.fit_heads import head_inputs, stage_scores
from training.whole_image import OrderConfig, VersionSets, order_figures, order_loss, parse_teacher, teacher_distance


def test_order_loss_is_zero_only_when_the_scores_follow_the_teacher():
    cfg = OrderConfig(slope=1.0, lambda_cal=0.0)
    t = torch.tensor([[0.0, 0.1, 0.3, 0.6]])
    good = 1.0 - 1.0 * t - torch.tensor([[0.0, 0.01, 0.02, 0.03]])  # ordered, gaps above slope * dt
    assert float(order_loss(good, t, cfg)["order"]) == 0.0
    bad = good.flip(-1)
    assert float(order_loss(bad, t, cfg)["order"]) > 0.3
    # the gradient raises the better version and lowers the worse one
    s = torch.zeros(1, 4, requires_grad=True)
    order_loss(s, t, cfg)["loss"].backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 3]


def test_order_loss_calibration_term_pulls_toward_anchor_minus_slope_t():
    cfg = OrderConfig(slope=2.0, anchor=1.0, lambda_order=0.0)
    t = torch.tensor([[0.0, 0.25]])
    on_scale = torch.tensor([[1.0, 0.5]])
    assert float(order_loss(on_scale, t, cfg)["cal"]) == 0.0
    assert float(order_loss(on_scale + 0.3, t, cfg)["cal"]) > 0.1


def test_order_loss_ignores_padding_and_close_pairs():
    cfg = OrderConfig(slope=1.0, min_gap=0.05, lambda_cal=0.0)
    t = torch.tensor([[0.0, 0.02, 0.5]])
    s = torch.tensor([[0.9, 1.0, 0.0]])  # the 0.02 version above the clean one: closer than min_gap
    assert float(order_loss(s, t, cfg)["order"]) == 0.0
    valid = torch.tensor([[True, True, False]])
    s2 = torch.tensor([[1.0, 0.9, 5.0]])  # a padded column scoring high must not count
    assert float(order_loss(s2, t, cfg, valid)["order"]) == 0.0


def test_teacher_parsing_and_distance():
    assert parse_teacher("lpips_vgg+dists") == {"lpips_vgg": 0.5, "dists": 0.5}
    assert parse_teacher("lpips_vgg:3,dists:1") == {"lpips_vgg": 0.75, "dists": 0.25}
    with pytest.raises(ValueError, match="unknown teacher metric"):
        parse_teacher("psnr")
    rec = {"lpips_vgg": [0.0, 0.4], "dists": [0.0, 0.2]}
    np.testing.assert_allclose(teacher_distance(rec, {"lpips_vgg": 0.5, "dists": 0.5}), [0.0, 0.3])


def test_kendall_tau_matches_scipy():
    stats = pytest.importorskip("scipy.stats")  # scipy comes with scikit-image (train extra)
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, 9).astype(float)
        b = a + rng.normal(0, 2, 9).round()
        assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)


def test_order_figures_and_summary():
    t = np.array([[0.0, 0.2, 0.4], [0.0, 0.3, 0.1]])
    s = np.array([[0.9, 0.5, 0.1], [0.4, 0.8, 0.2]])  # crop 2: clean not on top, one pair of three wrong
    fig = order_figures(s, t)
    assert fig["clean_top"] == 0.5
    assert fig["pair_agree"] == pytest.approx((1.0 + 1 / 3) / 2)
    data = {"items": [{"kinds": ["clean", "netA", "policy:hack"], "lpips_vgg": list(r), "dists": list(r),
                       "lpips_alex": list(r)} for r in t]}
    res = summarize(data, list(s))
    assert res["clean_top"] == 0.5
    assert res["kinds"]["netA"]["below_clean"] == 0.5
    assert res["kinds"]["policy:hack"]["below_clean"] == 1.0
    assert res["sr_below_clean"] == 0.5  # policies are reported apart
    assert res["tau_lpips_vgg"] == pytest.approx((1.0 + (-1 / 3)) / 2)
    data["items"][1]["dists"] = [0.0, 0.1, 0.3]  # crop 2: DISTS orders its two versions the other way
    agree = teacher_agreement(data)
    assert agree["lpips_vgg~lpips_alex"] == 1.0
    assert agree["lpips_vgg~dists"] == pytest.approx((1.0 + 1 / 3) / 2)


def test_network_family():
    assert network_family("waifu2x-photo-noise2-x2") == "waifu2x-photo"
    assert network_family("span-ch52-x4") == "span"
    assert network_family("realesrgan-x4plus") == "realesrgan-x4plus"
    assert network_family("realesrgan-x4plus-anime") == "realesrgan-x4plus-anime"


class _Stub:
    """A teacher: mean absolute difference to version 0 (deterministic, cheap)."""

    def __call__(self, images: np.ndarray) -> dict[str, list[float]]:
        d = np.abs(images.astype(np.float32) - images[:1].astype(np.float32)).mean(axis=(1, 2, 3)) / 255
        return {"lpips_vgg": d.tolist(), "lpips_alex": (2 * d).tolist(), "dists": (d / 2).tolist()}


def _build(out, counts):
    return build(out, counts, hr_size=64, seed=5, sources=("skimage",), networks=[ClassicalSR("bilinear", 2)],
                 teacher=_Stub(), progress=False, n_sr=2, n_classical=1, n_filter=2, n_operator=1)


def test_version_sets_build_resume_and_read(tmp_path):
    one = _build(tmp_path / "a", {"train": 3, "val": 1})
    _build(tmp_path / "b", {"train": 1})
    _build(tmp_path / "b", {"train": 3, "val": 1})  # resumed
    ra, rb = read_manifest(one), read_manifest(tmp_path / "b")
    assert ra.keys() == rb.keys() == {"train/000000", "train/000001", "train/000002", "val/000000"}
    for key in ra:
        assert ra[key]["kinds"] == rb[key]["kinds"] and ra[key]["lpips_vgg"] == rb[key]["lpips_vgg"]
    sets = VersionSets(one, "train")
    imgs = sets.images(0)
    assert imgs.dtype == np.uint8 and imgs.shape == (7, 64, 64, 3)  # clean + 2 + 1 + 2 + 1
    assert sets.kinds(0)[0] == "clean" and sets.distances(0)[0] == 0.0 and sets.distances(0)[1:].min() > 0
    with pytest.raises(ValueError, match="other settings"):
        build(tmp_path / "a", {"train": 3}, hr_size=64, seed=6, sources=("skimage",),
              networks=[ClassicalSR("bilinear", 2)], teacher=_Stub(), progress=False)


def test_version_maker_draws_every_kind():
    maker = VersionMaker([ClassicalSR("bicubic", 4)], {"hack": lambda lr: np.repeat(np.repeat(lr, 4, 0), 4, 1)},
                         n_sr=1, n_classical=1, n_filter=5, n_operator=2)
    hr = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    out = maker(hr, np.random.default_rng(1))
    kinds = [k for k, _, _ in out]
    assert kinds[0] == "clean" and kinds[1] == "sr:bicubic" and kinds[-1] == "policy:hack"
    assert {k for k in kinds if k.startswith("filter:")} == {f"filter:{f}" for f in ("blur", "sharpen", "noise", "waxy", "jpeg")}
    assert all(v.shape == hr.shape and v.dtype == np.float32 for _, v, _ in out)
    assert all(np.abs(v - hr).mean() > 1e-4 for _, v, _ in out[1:])


@pytest.mark.parametrize("features", ["top", "multilevel"])
def test_head_inputs_reproduce_the_model_scores(features):
    model = make_tiny_model(score_features=features)
    x = torch.rand(3, 3, 64, 64)
    s = stage_scores(model, head_inputs(model, x))
    for k in range(model.num_stages + 1):
        torch.testing.assert_close(s[:, k], model(x, stage=k).raw_score, atol=1e-5, rtol=1e-5)


def test_heads_trained_on_standardized_inputs_fold_into_heads_that_read_raw_ones():
    """``fit_heads --score_features multilevel --standardize``: the new heads carry the model's encoder
    and maps, and after folding the standardization they give on raw inputs what they gave on
    standardized ones."""
    from training.fit_heads import fold_standardization, with_score_features

    base = make_tiny_model()
    model = with_score_features(base, "multilevel")
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(model(x).pdm, base(x).pdm)
    inputs = head_inputs(model, x)
    assert inputs.shape[-1] == base.encoder.channels[-1] + 2 * sum(base.encoder.channels[:-1]) + 2
    mean, std = inputs.mean(0), inputs.std(0).clamp_min(1e-4) * 3.0
    expect = stage_scores(model, (inputs - mean) / std)
    fold_standardization(model, mean, std)
    torch.testing.assert_close(stage_scores(model, inputs), expect, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model(x, stage=1).raw_score, expect[:, 1], atol=1e-5, rtol=1e-4)


class _AlexOnly(_Stub):
    def __call__(self, images):
        return {"lpips_alex": super().__call__(images)["lpips_alex"]}


def test_label_adds_missing_teacher_distances_once(tmp_path):
    from training.data.versions import label

    out = build(tmp_path / "a", {"train": 2}, hr_size=64, seed=5, sources=("skimage",),
                networks=[ClassicalSR("bilinear", 2)], teacher=_AlexOnly(), progress=False, n_sr=1, n_classical=1,
                n_filter=1, n_operator=1)
    with pytest.raises(KeyError):
        VersionSets(out, "train", {"lpips_vgg": 1.0}).distances(0)
    assert label(out, ["lpips_vgg", "dists"], teacher=_Stub(), progress=False) == 2
    assert label(out, ["lpips_vgg", "dists"], teacher=_Stub(), progress=False) == 0  # nothing left to do
    sets = VersionSets(out, "train", {"lpips_vgg": 0.5, "dists": 0.5})
    expect = _Stub()(sets.images(1))
    np.testing.assert_allclose(sets.distances(1), 0.5 * np.array(expect["lpips_vgg"]) + 0.5 * np.array(expect["dists"]),
                               rtol=1e-6)
    assert read_manifest(out)["train/000001"]["lpips_alex"] == expect["lpips_alex"]


def _fit_heads_inputs(tmp_path, version_counts, fgr_train):
    """An initial model on the real ImageNet EfficientNet-Lite0 (saved), version sets and an FGR folder."""
    from diffusers_ext.models.finpercep_rm import FinPercepRM
    from training.data.build_fgr import build as build_fgr

    init = tmp_path / "init"
    torch.manual_seed(1)
    model = FinPercepRM(decoder_channels=8, head_hidden=16, min_size=32, native_size=64).eval()
    model.encoder.load_pretrained()
    model.save_pretrained(init)
    vers = _build(tmp_path / "versions", version_counts)
    fgr = build_fgr(tmp_path / "fgr", {"train": fgr_train, "val": 4}, hr_size=64, seed=3, feature="ssim",
                    pixel_scale=0.1, feature_scale=0.3, pool=[(ClassicalSR("bicubic"), 1.0)], progress=False)
    return model, init, vers, fgr


def test_fit_heads_learns_the_teacher_order_and_keeps_the_maps(tmp_path):
    """End to end: the refitted heads order the training sets as the teacher does better than before,
    the maps are untouched, and the written model is calibrated. The encoder is the real ImageNet
    EfficientNet-Lite0 (a random tiny encoder's pooled features hardly differ between versions)."""
    from diffusers_ext.models.finpercep_rm import FinPercepRM
    from training import fit_heads

    model, init, vers, fgr = _fit_heads_inputs(tmp_path, {"train": 6, "val": 3}, fgr_train=6)
    res = fit_heads.main(["--init", str(init), "--versions", str(vers), "--fgr", str(fgr), "--output_dir",
                          str(tmp_path / "out"), "--teacher", "lpips_vgg", "--val_teacher", "lpips_vgg",
                          "--steps", "300", "--batch_versions", "4", "--batch_triplets", "4", "--garbage_items", "8",
                          "--learning_rate", "3e-3"])
    fitted = FinPercepRM.from_pretrained(tmp_path / "out" / "model")
    assert fitted.calibrated
    sets = VersionSets(vers, "train", {"lpips_vgg": 1.0})
    agree = {}
    for name, m in (("before", model), ("after", fitted)):
        scores = [m(torch.from_numpy(sets.images(i)).permute(0, 3, 1, 2).float() / 255).raw_score.detach().numpy()
                  for i in range(len(sets))]
        agree[name] = order_figures(np.stack(scores), np.stack([sets.distances(i) for i in range(len(sets))]))["pair_agree"]
    assert agree["after"] > agree["before"] + 0.1 and agree["after"] > 0.8
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(fitted(x).pdm, model(x).pdm)  # the maps are exactly the initial model's
    assert res["history"] and (tmp_path / "out" / "result.json").is_file()
    assert "teacher" in (tmp_path / "out" / "model" / "README.md").read_text()


def test_feature_cache_refuses_rows_of_another_source(tmp_path):
    from training.fit_heads import _cached_rows

    rows = _cached_rows(tmp_path / "c", 3, lambda i: torch.full((2,), float(i)), "x", source="/data/a/versions")
    again = _cached_rows(tmp_path / "c", 3, lambda i: torch.zeros(2), "x", source="/data/a/versions")
    torch.testing.assert_close(again, rows)  # read back, not recomputed
    with pytest.raises(ValueError, match="holds features of /data/a/versions"):
        _cached_rows(tmp_path / "c", 3, lambda i: torch.zeros(2), "x", source="/data/b/versions")


def _adv_args(**kw):
    import argparse

    base = dict(seed=0, adv_per_set=2, adv_eps=2.0 / 255, adv_steps=4)
    return argparse.Namespace(**{**base, **kw})


def test_adversarial_versions_raise_the_attacked_score_and_carry_their_own_teacher_label(tmp_path):
    """``fit_heads --adv_sets``: each attacked version scores higher than the version it was made from
    (by the attacked model), stays inside the budget (its teacher distance close to its source's), and is
    labelled with its own LPIPS-alex distance to the clean crop, not its source's."""
    from training.data.versions import Teacher
    from training.fit_heads import adversarial_features

    model = make_tiny_model()
    model.save_pretrained(tmp_path / "m")
    sets = VersionSets(_build(tmp_path / "v", {"train": 3}), "train", {"lpips_alex": 1.0})
    chosen = np.array([0, 2])
    feats, dist, picks = adversarial_features(str(tmp_path / "m"), model, [sets], chosen, _adv_args(),
                                              tmp_path / "cache", {"lpips_alex": 1.0})
    assert feats.shape[:2] == dist.shape == picks.shape == (2, 2) and bool((picks >= 1).all())
    teacher = Teacher(["lpips_alex"])
    for row, i in enumerate(chosen):
        imgs = torch.from_numpy(sets.images(i)).permute(0, 3, 1, 2).float() / 255
        src = imgs[picks[row]]
        gain = stage_scores(model, feats[row])[:, model.stage] - model(src).raw_score
        assert bool((gain > 0).all())
        d_src = teacher.distances(src, imgs[:1])["lpips_alex"]
        assert float((dist[row] - d_src).abs().max()) < 0.15  # inside the budget (64 px: LPIPS moves ~0.1)
        assert not torch.allclose(dist[row], d_src)  # its own label
    again = adversarial_features(str(tmp_path / "m"), model, [sets], chosen, _adv_args(), tmp_path / "cache",
                                 {"lpips_alex": 1.0})
    torch.testing.assert_close(again[0], feats)  # read back from the cache
    other = adversarial_features(str(tmp_path / "m"), model, [sets], chosen, _adv_args(adv_eps=8 / 255),
                                 tmp_path / "cache", {"lpips_alex": 1.0})
    assert not torch.allclose(other[0], feats)  # another attack: a cache of its own


def test_fit_heads_orders_the_adversarial_versions_by_the_teacher(tmp_path):
    """``fit_heads --adv_sets``: the attacks on the initial model, appended to their sets, end up below the
    clean crop and ordered among the set's versions as the teacher orders them, only when their order term
    is on."""
    from training import fit_heads

    _, init, vers, fgr = _fit_heads_inputs(tmp_path, {"train": 8, "val": 2}, fgr_train=4)
    common = ["--init", str(init), "--versions", str(vers), "--fgr", str(fgr), "--teacher", "lpips_alex",
              "--val_teacher", "lpips_vgg", "--steps", "200", "--batch_versions", "4", "--batch_triplets", "4",
              "--garbage_items", "8", "--learning_rate", "3e-3", "--lambda_consistency", "0", "--adv_sets", "6",
              "--adv_per_set", "3", "--adv_steps", "5", "--adv_eps", str(4 / 255), "--cache", str(tmp_path / "cache")]
    res = {lam: fit_heads.main([*common, "--output_dir", str(tmp_path / f"out{lam}"), "--lambda_adv", lam])
           for lam in ("1", "0")}
    on, off = res["1"]["history"][-1], res["0"]["history"][-1]
    assert res["1"]["before"]["adv_gain"] > 0  # the attacks worked on the initial model
    assert on["adv_above_clean"] == 0.0 < off["adv_above_clean"]
    assert on["adv_pair_agree"] > max(0.9, off["adv_pair_agree"] + 0.3)
    assert "--adv_sets 6" in (tmp_path / "out1" / "model" / "README.md").read_text()
    with pytest.raises(ValueError, match="--adv_sets 9"):
        fit_heads.main([*common, "--output_dir", str(tmp_path / "bad"), "--adv_sets", "9"])


def test_train_subset_keeps_whole_photos_or_a_share_of_sets():
    """``fit_heads --photo_fraction / --set_fraction`` (the data-scaling runs): a photo share keeps every set of
    the chosen photos and none of the others; a set share keeps sets of every photo; both are seeded."""
    from training.fit_heads import train_subset

    photos = [f"p{i % 8}" for i in range(80)]                      # 8 photos, 10 sets each
    assert train_subset(photos, 1, 1, 0).tolist() == list(range(80))
    half = train_subset(photos, 0.5, 1, 0)
    kept = {photos[i] for i in half}
    assert len(kept) == 4 and len(half) == 40 and all(photos[i] in kept for i in half)
    assert sorted(i for i, p in enumerate(photos) if p in kept) == half.tolist()   # whole photos
    sets = train_subset(photos, 1, 0.5, 0)
    assert len(sets) == 40 and len({photos[i] for i in sets}) == 8
    assert train_subset(photos, 0.5, 1, 0).tolist() == half.tolist()
    assert train_subset(photos, 0.5, 1, 1).tolist() != half.tolist()                 # another seed, other photos
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="--photo_fraction"):
            train_subset(photos, bad, 1, 0)
        with pytest.raises(ValueError, match="--set_fraction"):
            train_subset(photos, 1, bad, 0)


def test_fit_heads_trains_on_the_photo_share_it_is_given(tmp_path):
    from training import fit_heads

    _, init, vers, fgr = _fit_heads_inputs(tmp_path, {"train": 8, "val": 2}, fgr_train=4)
    photos = {r["photo"] for r in VersionSets(vers, "train").records}
    common = ["--init", str(init), "--versions", str(vers), "--fgr", str(fgr), "--teacher", "lpips_vgg",
              "--val_teacher", "lpips_vgg", "--steps", "150", "--batch_versions", "2", "--batch_triplets", "4", "--learning_rate", "3e-3",
              "--garbage_items", "8", "--lambda_consistency", "0", "--cache", str(tmp_path / "cache")]
    res = fit_heads.main([*common, "--output_dir", str(tmp_path / "half"), "--photo_fraction", "0.5"])
    assert res["train_photos"] == max(1, round(len(photos) / 2)) < len(photos) and 0 < res["train_sets"] < 8
    assert "--photo_fraction 0.5" in (tmp_path / "half" / "model" / "README.md").read_text()
    with pytest.raises(ValueError, match="--set_fraction 0"):
        fit_heads.main([*common, "--output_dir", str(tmp_path / "bad"), "--set_fraction", "0"])
    assert not (tmp_path / "bad").exists()
