"""cmodel.train (masked retraining, sensitivity, trained quantisation),
the prequantised encoder input, cmodel.train.datasets (IDX, Fashion-MNIST), and a
tiny end-to-end run of the demo pipeline through the runtime."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cmodel  # noqa: E402
from cmodel import train as T  # noqa: E402
from cmodel.encode import encoder  # noqa: E402
from cmodel.encode.rules import Prequantised  # noqa: E402
from cmodel.train import datasets  # noqa: E402
from cmodel.errors import CmzError  # noqa: E402


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)


def step(model, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


# --- masks ---------------------------------------------------------------------


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.05),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
    lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.05),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05),
], ids=["sgd-momentum-wd", "nesterov", "adam-wd", "adamw"])
def test_masks_survive_optimizer_steps(make_opt):
    model = mlp()
    opt = make_opt(model.parameters())
    for x, y in batches(5):  # fill momentum buffers / moments before pruning
        step(model, opt, x, y)
    masks = T.prune_masks(model, {"0.weight": 0.8, "2.weight": 0.5})
    m = T.Masks(model, masks)
    h = m.attach(opt)
    w0 = model[0].weight
    for x, y in batches(10, seed=2):
        step(model, opt, x, y)
        for name, mask in masks.items():
            w = dict(model.named_parameters())[name].detach()
            pruned = w[~mask]
            assert pruned.numel() and torch.all(pruned.view(torch.int32) == 0)  # exactly +0.0
    assert float((w0.detach() != 0).float().mean()) == pytest.approx(0.2, abs=1 / w0.numel())
    # The kept weights did train.
    before = w0.detach().clone()
    step(model, opt, *next(batches(1, seed=3)))
    assert not torch.equal(before[masks["0.weight"]], w0.detach()[masks["0.weight"]])
    # Control: without the hooks, the momentum buffer and decay would move pruned weights.
    h.remove()
    step(model, opt, *next(batches(1, seed=4)))
    assert torch.count_nonzero(w0.detach()[~masks["0.weight"]]) > 0


def test_prune_masks_are_the_encoders():
    model = mlp()
    with torch.no_grad():  # ties and exact zeros exercise the rule's tie breaks
        model[0].weight.copy_(torch.round(model[0].weight * 20) / 20)
    mask = T.prune_masks(model, {"0.weight": 0.7})["0.weight"].numpy()
    w = model[0].weight.detach().numpy()
    assert np.array_equal(mask, encoder.prune(w, sparsity=0.7))
    assert np.count_nonzero(~mask) == round(0.7 * w.size)


def test_pruning_schedule_and_iterative_prune():
    sched = T.pruning_schedule({"w": 0.92}, 3)
    assert [round(s["w"], 3) for s in sched] == [0.569, 0.814, 0.92]
    with pytest.raises(CmzError, match="steps: expected an int ≥ 1; found 0"):
        T.pruning_schedule({"w": 0.5}, 0)
    model = mlp()
    seen = []

    def retrain(masks, i):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        h = masks.attach(opt)
        for x, y in batches(3, seed=10 + i):
            step(model, opt, x, y)
        h.remove()
        seen.append(masks.masks["0.weight"].clone())

    final = T.iterative_prune(model, {"0.weight": 0.9}, 3, retrain)
    assert len(seen) == 3
    for a, b in zip(seen, seen[1:]):
        assert not torch.any(b & ~a)  # nested: a pruned weight stays pruned
    assert final.kept()["0.weight"] == pytest.approx(0.1, abs=1 / 3072)
    assert torch.count_nonzero(model[0].weight.detach()) == int(final.masks["0.weight"].sum())


def test_masks_bad_input():
    model = mlp()
    with pytest.raises(CmzError, match=r"mask of '0.weight': expected a bool tensor of shape \[48, 64\]; found torch.float32"):
        T.Masks(model, {"0.weight": torch.ones(48, 64)})
    with pytest.raises(CmzError, match="layer 'nope': expected a parameter name"):
        T.prune_masks(model, {"nope": 0.5})


# --- sensitivity -----------------------------------------------------------------


def test_sensitivity_prunes_identically_to_the_encoder(tmp_path):
    model = mlp()
    with torch.no_grad():
        model[0].weight.copy_(torch.round(model[0].weight * 30) / 30)  # many ties
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    patterns = []

    def eval_fn(m):
        patterns.append({n: (p.detach() != 0).numpy().copy() for n, p in m.named_parameters() if p.ndim == 2})
        return float(len(patterns))

    rows = T.sensitivity(model, eval_fn, ["0.weight", "2.weight"], [0.5, 0.9], csv_path=tmp_path / "s.csv", png_path=tmp_path / "s.png")
    assert [(r["layer"], r["sparsity"]) for r in rows] == [("0.weight", 0.0), ("0.weight", 0.5), ("0.weight", 0.9), ("2.weight", 0.0), ("2.weight", 0.5), ("2.weight", 0.9)]
    for n, p in model.named_parameters():  # restored
        assert torch.equal(p.detach(), original[n])
    # The evaluated patterns are those of files the encoder writes with that sparsity.
    calls = iter(patterns[1:])
    for layer in ("0.weight", "2.weight"):
        for s in (0.5, 0.9):
            got = next(calls)
            path = tmp_path / f"{layer}-{s}.cmz"
            cmodel.save_file({layer: original[layer]}, path, rules={layer: {"compress": True, "sparsity": s, "bits": 8}})
            with cmodel.open(path) as f:
                c = f.read_compressed(layer)
                from cmodel.codecs import entries as sp

                d, codes = sp.unpack_entries(c.entries, c.n_entries, c.index_bits, c.bits)
                enc_codes = sp.relative_index_decode(c.pointers, d, codes, (c.rows, c.cols), c.index_bits, c.order)
            assert np.array_equal(got[layer], enc_codes != 0)
            other = "2.weight" if layer == "0.weight" else "0.weight"
            assert np.array_equal(got[other], (original[other] != 0).numpy())  # one layer pruned at a time
            r = next(r for r in rows if r["layer"] == layer and r["sparsity"] == s)
            assert r["kept_percent"] == pytest.approx(100 * got[layer].mean())
    text = (tmp_path / "s.csv").read_text().splitlines()
    assert text[0] == "layer,sparsity,kept_percent,accuracy" and len(text) == 7
    pytest.importorskip("matplotlib")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- trained quantisation ----------------------------------------------------------


def test_trained_centroids_keep_codes_and_zero(tmp_path):
    model = mlp()
    masks = T.Masks(model, T.prune_masks(model, {"0.weight": 0.75}))
    pruned = ~masks.masks["0.weight"]
    w_pruned = model[0].weight.detach().numpy().copy()
    tq = T.TrainedQuantization(model, {"0.weight": 4, "2.weight": {"bits": 3, "scale": "none"}})
    codes0 = tq.codes("0.weight")
    cb0 = tq.codebook("0.weight").copy()
    assert cb0[0] == 0 and np.array_equal(codes0 == 0, pruned.numpy())
    # The codebook is the encoder's for that tensor (its k-means, row scales).
    ref = encoder.share_weights("0.weight", w_pruned, {"bits": 4, "threshold": 0.0})
    assert np.array_equal(ref.codebook, cb0) and np.array_equal(ref.codes, codes0)
    opt = torch.optim.SGD(tq.parameters() + tq.other_parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    tq.attach(opt)
    layer = tq.layers["0.weight"]
    for i, (x, y) in enumerate(batches(8, seed=5)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if i == 0:  # the centroid gradient is the per-cluster sum of scaled weight gradients
            g = model[0].weight.grad.numpy() * layer.row_scale.numpy()[:, None]
            want = np.bincount(codes0.reshape(-1), weights=g.reshape(-1), minlength=16)
            want[0] = 0
            tq.accumulate()
            assert np.allclose(layer.centroids.grad.numpy(), want, rtol=1e-5, atol=1e-7)
            assert model[0].weight.grad is None
            opt.step()  # the pre-hook sees no weight gradient left; the centroids keep theirs
        else:
            opt.step()
    cb1 = tq.codebook("0.weight")
    assert cb1[0] == 0 and not np.array_equal(cb1, cb0)
    assert np.array_equal(tq.codes("0.weight"), codes0)
    w = model[0].weight.detach().numpy()
    scales = tq.prequantised()["0.weight"].scales
    assert np.array_equal(w, cb1[codes0] * scales.astype(np.float32)[:, None])  # weights = scale × codebook[code]
    assert np.all(w[pruned.numpy()] == 0)
    # Export: the file holds exactly these codebooks and codes (no re-clustering).
    report = tq.export(torch.zeros(1, 64), tmp_path / "m.cmz")
    back = cmodel.load_file(tmp_path / "m.cmz")
    for n, p in model.named_parameters():
        assert np.array_equal(back[n], p.detach().numpy()), n
    with cmodel.open(tmp_path / "m.cmz") as f:
        f.verify()
        assert np.array_equal(f.read_compressed("0.weight").codebook, cb1)
        assert f.record("0.weight").encoding == "sparse" and f.record("2.weight").encoding == "codebook"
        assert f.record("2.weight").params["scale"] == "none"
    d = report.to_dict()
    t0 = d["tensors"][0]
    assert t0["name"] == "0.weight" and t0["bits"] == 4 and t0["kept_percent"] == pytest.approx(25.0, abs=0.1)
    assert d["file_bytes"] == (tmp_path / "m.cmz").stat().st_size


def test_prequantised_encoder_input(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 8, (20, 70)).astype(np.uint8)
    cb = np.array([0, -1.5, -0.5, 0.25, 0.5, 1, 2, 0], np.float16)
    scales = rng.uniform(0.5, 2, 20).astype(np.float32)
    pq = Prequantised(cb, codes, scales, sparse=True)
    # Lossy options do not reach it; coding options do.
    report = cmodel.save_file({"w": pq, "b": np.ones(20, np.float32)}, tmp_path / "p.cmz",
                              options={"sparsity": 0.5, "bits": 2, "coding": "packed", "index_bits": 3})
    back = cmodel.load_file(tmp_path / "p.cmz")
    assert np.array_equal(back["w"], pq.dequantize())
    assert np.array_equal(back["w"], cb.astype(np.float32)[codes] * scales[:, None])
    with cmodel.open(tmp_path / "p.cmz") as f:
        f.verify()
        r = f.record("w")
        assert (r.encoding, r.params["bits"], r.params["index_bits"], r.params["coding"], r.params["codebook_dtype"]) == ("sparse", 3, 3, "packed", "float16")
    t = report.to_dict()["tensors"][0]
    assert t["kept_percent"] == pytest.approx(100 * np.count_nonzero(codes) / codes.size)
    dense = Prequantised(np.linspace(-1, 1, 4).astype(np.float32), codes % 4, None, sparse=False)
    cmodel.save_file({"w": dense}, tmp_path / "d.cmz")
    assert np.array_equal(cmodel.load_file(tmp_path / "d.cmz")["w"], dense.dequantize())


@pytest.mark.parametrize("kwargs, message", [
    (dict(codebook=np.zeros(6, np.float32)), "a codebook of 2\\*\\*bits values, bits in 1..8; found 6 values"),
    (dict(codebook=np.ones(4, np.float32)), "codebook\\[0\\] = \\+0.0 in a sparse tensor"),
    (dict(codebook=np.array([-0.0, 1, 2, 3], np.float32)), "codebook\\[0\\] = \\+0.0 in a sparse tensor"),
    (dict(codes=np.full((3, 5), 4, np.uint8)), "codes < 4 \\(2\\*\\*bits\\); found 4"),
    (dict(codes=np.zeros(15, np.uint8)), "codes a uint8 numpy array with ≥ 2 dims"),
    (dict(scales=np.ones(5, np.float32)), "scales None or a float32/float16 array of shape \\(3,\\)"),
    (dict(scales=np.array([1, np.inf, 1], np.float32)), "finite scales"),
    (dict(codebook=np.array([0, 1, np.nan, 3], np.float32)), "finite codebook values"),
    (dict(sparse=1), "sparse true or false"),
])
def test_prequantised_bad_input(kwargs, message):
    args = dict(codebook=np.array([0, 1, 2, 3], np.float32), codes=np.zeros((3, 5), np.uint8), scales=None, sparse=True)
    args.update(kwargs)
    with pytest.raises(CmzError, match="prequantised tensor: expected " + message):
        Prequantised(**args)


# --- datasets ------------------------------------------------------------------------


def idx_bytes(a: np.ndarray, type_byte=0x08) -> bytes:
    return b"\0\0" + bytes([type_byte, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(a.dtype.newbyteorder(">")).tobytes()


def test_read_idx_plain_and_gzip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(a))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(a)))
    assert np.array_equal(datasets.read_idx(tmp_path / "a"), a)
    assert np.array_equal(datasets.read_idx(tmp_path / "a.gz"), a)
    f = np.array([[1.5, -2.0]], np.float32)
    (tmp_path / "f").write_bytes(idx_bytes(f, 0x0D))
    got = datasets.read_idx(tmp_path / "f")
    assert got.dtype == np.float32 and np.array_equal(got, f)


@pytest.mark.parametrize("data, message", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x02ab", "expected the magic 00 00 <type> <ndim>; found 01 00 08 01"),
    (b"", "expected the magic 00 00 <type> <ndim>; found an empty file"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x02ab", "expected an element type in 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E; found 0x07"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x02", "expected 2 dimension sizes \\(4 bytes each\\); found 4 bytes"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03ab", "expected 3 data bytes for shape \\[3\\] of uint8; found 2"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01ab", "expected 1 data bytes for shape \\[1\\] of uint8; found more"),
    (b"\x00\x00\x0e\x02\xff\xff\xff\xff\xff\xff\xff\xff", "expected at most 2147483648 data bytes"),
    (b"\x1f\x8b\x08\x00garbage", "expected a sound gzip stream"),
])
def test_read_idx_bad(tmp_path, data, message):
    (tmp_path / "x").write_bytes(data)
    with pytest.raises(CmzError, match=message):
        datasets.read_idx(tmp_path / "x")


def test_fashion_mnist_from_tiny_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("test", 3)):
        img, lab = datasets.FASHION_MNIST_FILES[split]
        x = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        (tmp_path / (img + ".gz")).write_bytes(gzip.compress(idx_bytes(x)))
        (tmp_path / lab).write_bytes(idx_bytes(y))  # a plain copy is found too
        gx, gy = datasets.fashion_mnist(split, root=tmp_path)
        assert np.array_equal(gx, x) and np.array_equal(gy, y)
    img, lab = datasets.FASHION_MNIST_FILES["test"]
    (tmp_path / lab).write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(CmzError, match="expected 3 uint8 labels \\(one per image\\); found uint8 of shape \\[4\\]"):
        datasets.fashion_mnist("test", root=tmp_path)
    with pytest.raises(CmzError, match="split: expected one of"):
        datasets.fashion_mnist("val", root=tmp_path)


def test_dataset_missing_names_the_package(tmp_path, capsys):
    with pytest.raises(datasets.DatasetMissing) as e:
        datasets.fashion_mnist("train", root=tmp_path / "none")
    msg = str(e.value)
    assert "\n" not in msg and "dataset-fashion-mnist" in msg and "apt-get install -y dataset-fashion-mnist" in msg
    assert isinstance(e.value, FileNotFoundError)


# --- end to end --------------------------------------------------------------------


def test_tiny_end_to_end_through_the_runtime(tmp_path):
    from cmodel.train import demo

    cfg = demo.Config(**demo.LENET300_DEMO.to_dict())
    cfg.synthetic, cfg.subset, cfg.epochs, cfg.retrain_epochs, cfg.quant_epochs, cfg.prune_steps = True, 800, 1, 1, 1, 2
    res = demo.deep_compression(cfg, str(tmp_path), log=lambda *a: None, speed=False)
    path = tmp_path / "lenet300.cmz"
    with cmodel.open(path) as f:
        f.verify()
        assert f.graph is not None
        assert [f.record(n).encoding for n in f.tensor_names()] == ["sparse", "raw"] * 3
    assert res["file_bytes"] == path.stat().st_size
    assert res["ratio_file"] == pytest.approx(res["state_dict_fp32_bytes"] / res["file_bytes"])
    assert res["runtime_torch_agreement"] >= 99.0
    assert res["runtime_accuracy"] > 50.0  # ten classes: far above chance after one epoch
    kept = {t["name"]: t["kept_percent"] for t in res["report"]["tensors"]}
    assert kept["ip1.weight"] == pytest.approx(8.0, abs=0.01) and kept["ip3.weight"] == pytest.approx(26.0, abs=0.01)
    assert "ip1.weight" in res["table"] and "whole file" in res["table"]
    assert (tmp_path / "lenet300.json").exists()
