"""FID: closed-form Gaussian cases, agreement with scipy's sqrtm and torchmetrics, the Inception network's
structure and key names (pt_inception-2015-12-05), weight loading, resize conventions, CLI, bad input."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tsugiki.benchmarks import fid
from tsugiki.benchmarks.fid_inception import BasicConv2d, FIDInceptionV3
from tsugiki.errors import CheckpointError

REL = 1e-6



def _rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_diagonal_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 50), rng.uniform(0.1, 3, 50)
    mu_a, mu_b = rng.normal(size=50), rng.normal(size=50)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(expected, rel=REL)


def test_rotated_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, 40), rng.uniform(0.1, 3, 40)
    q = _rotation(40, 2)
    mu = rng.normal(size=40)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # same rotation: the covariances commute
    got = fid.frechet_distance(mu, q @ np.diag(a) @ q.T, mu, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=REL)
    # a near-singular direction (1e-12) paired with a wide one: sqrt(1e-12 * 3) must not be lost as noise
    a[0], b[0] = 1e-12, 3.0
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fid.frechet_distance(mu, q @ np.diag(a) @ q.T, mu, q @ np.diag(b) @ q.T)
    lost = np.sum((np.sqrt(a[1:]) - np.sqrt(b[1:])) ** 2) + 3.0
    assert got == pytest.approx(expected, rel=1e-9) and abs(got - lost) > 3e-6


def test_non_commuting_2x2_closed_form():
    # for 2x2 PSD A, B: Tr sqrt(AB) = sqrt(tr(AB) + 2 sqrt(det(AB)))
    q = _rotation(2, 3)
    sa = np.diag([4.0, 0.25])
    sb = q @ np.diag([1.0, 9.0]) @ q.T
    ab = sa @ sb
    tr_sqrt = np.sqrt(np.trace(ab) + 2 * np.sqrt(np.linalg.det(ab)))
    expected = np.trace(sa) + np.trace(sb) - 2 * tr_sqrt
    assert fid.frechet_distance(np.zeros(2), sa, np.zeros(2), sb) == pytest.approx(expected, rel=REL)


def test_agrees_with_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 64)) @ rng.normal(size=(64, 64)) * 0.2
    y = rng.normal(size=(300, 64)) @ rng.normal(size=(64, 64)) * 0.2 + 0.05
    sx, sy = fid.feature_stats(x), fid.feature_stats(y)
    covmean = linalg.sqrtm(sx.sigma @ sy.sigma).real
    d = sx.mu - sy.mu
    reference = d @ d + np.trace(sx.sigma) + np.trace(sy.sigma) - 2 * np.trace(covmean)
    assert fid.fid_from_features(x, y) == pytest.approx(reference, rel=REL)
    # stats as pytorch-fid computes them
    np.testing.assert_allclose(sx.sigma, np.cov(x, rowvar=False), rtol=1e-12, atol=1e-12)


def test_agrees_with_torchmetrics():
    fid_mod = pytest.importorskip("torchmetrics.image.fid")

    class Identity(torch.nn.Module):
        num_features = 32

        def forward(self, x):
            return x

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(200, 32)), rng.normal(size=(150, 32)) * 1.3 + 0.2
    metric = fid_mod.FrechetInceptionDistance(feature=Identity(), normalize=True)
    metric.set_dtype(torch.float64)
    metric.update(torch.tensor(a), real=True)
    metric.update(torch.tensor(b), real=False)
    assert fid.fid_from_features(a, b) == pytest.approx(float(metric.compute()), rel=REL)


def test_rank_deficient_covariances_are_stable():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(10, 256))  # rank 9 covariance in 256 dimensions
    assert fid.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = np.full(256, 0.1)
    assert fid.fid_from_features(x, x + shift) == pytest.approx(float(shift @ shift), rel=REL)


def test_bad_feature_sets(tmp_path):
    good = np.zeros((3, 4))
    with pytest.raises(fid.FIDError, match="empty set"):
        fid.fid_from_features(np.zeros((0, 4)), good)
    with pytest.raises(fid.FIDError, match="at least 2 images.*covariance undefined"):
        fid.fid_from_features(good, np.zeros((1, 4)))
    with pytest.raises(fid.FIDError, match="dimensions differ"):
        fid.fid_from_features(good, np.zeros((3, 5)))
    with pytest.raises(fid.FIDError, match="NaN"):
        fid.fid_from_features(good, np.full((3, 4), np.nan))
    with pytest.raises(fid.FIDError, match="N x D"):
        fid.fid_from_features(np.zeros(4), good)
    with pytest.raises(fid.FIDError, match="empty image set"):
        fid.inception_features(FIDInceptionV3(), [])


# ---- the network ----------------------------------------------------------------------------------
# Names and shapes from pytorch-fid's fid_inception_v3(): torchvision's Inception3(num_classes=1008,
# aux_logits=False) with FIDInceptionA/C/E_1/E_2 blocks, loaded strictly from pt_inception-2015-12-05.
EXPECTED_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": [32, 3, 3, 3],
    "Conv2d_4a_3x3.bn.running_var": [192],
    "Mixed_5b.branch_pool.conv.weight": [32, 192, 1, 1],
    "Mixed_5d.branch5x5_2.conv.weight": [64, 48, 5, 5],
    "Mixed_6a.branch3x3.conv.weight": [384, 288, 3, 3],
    "Mixed_6b.branch7x7dbl_5.conv.weight": [192, 128, 1, 7],
    "Mixed_6e.branch7x7_3.conv.weight": [192, 192, 7, 1],
    "Mixed_7a.branch7x7x3_4.conv.weight": [192, 192, 3, 3],
    "Mixed_7b.branch3x3dbl_3b.bn.bias": [384],
    "Mixed_7c.branch3x3_2a.conv.weight": [384, 384, 1, 3],
    "Mixed_7c.branch_pool.conv.weight": [192, 2048, 1, 1],
    "fc.weight": [1008, 2048],
    "fc.bias": [1008],
}
BLOCK_BRANCHES = {
    "Mixed_5b": ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"],
    "Mixed_6a": ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
    "Mixed_6c": ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
                 "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"],
    "Mixed_7a": ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"],
    "Mixed_7c": ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
                 "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"],
}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_structure_and_key_names(net):
    state = net.state_dict()
    for name, shape in EXPECTED_SHAPES.items():
        assert list(state[name].shape) == shape, name
    for block, branches in BLOCK_BRANCHES.items():
        assert [n for n, _ in getattr(net, block).named_children()] == branches
    # InceptionV3's 94 conv+BN layers; torchvision documents 27,161,264 parameters for inception_v3
    # (1000 classes, with the 3,326,696-parameter AuxLogits head); without it and with 1008 classes:
    assert sum(isinstance(m, BasicConv2d) for m in net.modules()) == 94
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696 + 8 * 2048 + 8
    per_conv = {"conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert len(state) == 94 * len(per_conv) + 2


def test_pool3_features(net):
    with torch.no_grad():
        out = net(torch.rand(1, 3, 107, 107) * 2 - 1)  # fully convolutional: any size >= 75 gives pool3
    assert out.shape == (1, 2048) and bool((out >= 0).all())  # average of ReLU outputs


def test_weights_loaded_by_key(net, tmp_path, monkeypatch):
    # stored as float16 to keep the test file small; loading copies into the float32 network
    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    path = tmp_path / "inception.safetensors"
    save_file(state, path)
    loaded = fid.load_inception(path).state_dict()
    assert all(torch.equal(loaded[k], v.float()) for k, v in state.items())
    pth = tmp_path / fid.FID_WEIGHTS_NAME
    pth.write_bytes(b"not even read")
    with pytest.raises(CheckpointError, match="pickle file refused"):
        fid.load_inception(pth)
    torch.save({"fc.bias": torch.zeros(1008)}, pth)
    with pytest.raises(CheckpointError, match="'Conv2d_1a_3x3.conv.weight' missing"):
        fid.load_inception(pth, allow_pickle=True)
    own = net.state_dict()
    for bad, match in (({k: v for k, v in state.items() if k != "Mixed_6b.branch1x1.bn.bias"}, "'Mixed_6b.branch1x1.bn.bias' missing"),
                       ({**state, "AuxLogits.fc.weight": torch.zeros(1)}, "unexpected tensor 'AuxLogits.fc.weight'"),
                       ({**state, "fc.bias": torch.zeros(1000)}, r"'fc.bias' has shape \[1000\]")):
        with pytest.raises(CheckpointError, match=match):
            fid.check_inception_state(bad, own, "w")
    fid.check_inception_state({**state, "fc.bias": torch.zeros(1008)}, own, "w")  # num_batches_tracked optional
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match="no FID Inception weights: pass --inception-weights"):
        fid.load_inception(None)
    with pytest.raises(CheckpointError, match="not found"):
        fid.load_inception(tmp_path / "nope.pth")


def test_resize_conventions():
    from PIL import Image

    img = np.random.default_rng(7).integers(0, 256, (299, 299, 3), dtype=np.uint8)
    clean = fid.preprocess([img], "clean")[0]
    # already 299x299: clean-fid's bicubic resize is the identity; TF's (x - 128) / 128 scaling
    torch.testing.assert_close(clean, (torch.from_numpy(img).permute(2, 0, 1).float() - 128) / 128, rtol=0, atol=1e-5)
    small = np.random.default_rng(8).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    legacy = fid.preprocess([Image.fromarray(small)], "legacy")[0]
    ref = torch.nn.functional.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255, size=(299, 299),
                                          mode="bilinear", align_corners=False)[0] * 2 - 1
    torch.testing.assert_close(legacy, ref)
    chan = np.asarray(Image.fromarray(small[:, :, 1].astype(np.float32)).resize((299, 299), Image.Resampling.BICUBIC))
    torch.testing.assert_close(fid.preprocess([small], "clean")[0, 1], (torch.from_numpy(chan.copy()) - 128) / 128)
    with pytest.raises(fid.FIDError, match="unknown resize mode"):
        fid.preprocess([small], "nearest")
    with pytest.raises(fid.FIDError, match="RGB uint8"):
        fid.preprocess([small.astype(np.float32)], "clean")


def test_score_fid_cli(tmp_path, capsys):
    from tsugiki.commands.images import add_score_fid_parser

    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(30, 8)), rng.normal(size=(20, 8)) + 1
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    parser = argparse.ArgumentParser()
    add_score_fid_parser(parser.add_subparsers())
    args = parser.parse_args(["fid", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == {"fid": pytest.approx(fid.fid_from_features(a, b), rel=1e-12)}
    np.save(tmp_path / "one.npy", a[:1])
    args = parser.parse_args(["fid", str(tmp_path / "a.npy"), str(tmp_path / "one.npy")])
    with pytest.raises(fid.FIDError, match="at least 2"):
        args.func(args)
