"""cmz compress / decompress / bench / info on compressed files."""

import json

import numpy as np
import pytest

import cmodel
from cmodel.cli import main, parse_rule


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(1)
    sd = {
        "conv1.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "fc1.weight": rng.standard_normal((64, 200)).astype(np.float32),
        "fc1.bias": rng.standard_normal(64).astype(np.float32),
        "fc2.weight": rng.standard_normal((10, 64)).astype(np.float32),
    }
    p = tmp_path / "m.npz"
    np.savez(p, **sd)
    return p, sd


def test_parse_rule():
    assert parse_rule("fc*:sparsity=0.9,bits=5,coding=packed,skip=false") == ("fc*", {"sparsity": 0.9, "bits": 5, "coding": "packed", "skip": False})
    assert parse_rule("a:b:index-bits=auto") == ("a:b", {"index_bits": "auto"})


@pytest.mark.parametrize("text", ["nocolon", "fc*:", ":bits=5", "fc*:bits"])
def test_parse_rule_rejects(text):
    with pytest.raises(cmodel.CmzError) as e:
        parse_rule(text)
    assert e.value.check == "encoder_options"


def test_compress_json_report_matches_file(npz, tmp_path, capsys):
    src, sd = npz
    out = tmp_path / "m.cmz"
    assert main(["compress", str(src), "-o", str(out), "--sparsity", "0.8", "--bits", "4", "--order", "col", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["file_bytes"] == out.stat().st_size == sum(rep["totals"].values())
    by_name = {t["name"]: t for t in rep["tensors"]}
    assert by_name["fc1.weight"]["encoding"] == "sparse" and by_name["fc1.weight"]["bits"] == 4
    assert abs(by_name["fc1.weight"]["kept_percent"] - 20.0) < 0.01
    assert by_name["fc2.weight"]["protected"] == "last linear" and by_name["fc2.weight"]["encoding"] == "raw"  # 640 elements
    assert by_name["conv1.weight"]["encoding"] == "raw"
    with cmodel.open(out) as f:
        f.verify()
        assert f.record("fc1.weight").params["order"] == "col"


def test_rules_and_config(npz, tmp_path, capsys):
    src, _ = npz
    cfg = tmp_path / "c.toml"
    cfg.write_text('[options]\nbits = 6\n[rules]\n"fc2.*" = { compress = true, bits = 3 }\n"fc1.weight" = { coding = "packed" }\n')
    out = tmp_path / "m.cmz"
    assert main(["compress", str(src), "-o", str(out), "--config", str(cfg), "--rule", "fc1.weight:bits=5"]) == 0
    with cmodel.open(out) as f:
        assert f.record("fc1.weight").params["bits"] == 5  # --rule after the config's rules
        assert f.record("fc1.weight").params["coding"] == "packed"
        assert f.record("fc2.weight").encoding == "codebook" and f.record("fc2.weight").params["bits"] == 3
    capsys.readouterr()


def test_bad_option_is_one_line_exit_1(npz, tmp_path, capsys):
    src, _ = npz
    assert main(["compress", str(src), "-o", str(tmp_path / "x.cmz"), "--rule", "fc*:bits=9"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bits" in err and "encoder_options" in err
    assert not (tmp_path / "x.cmz").exists()


def test_bad_input_suffix(tmp_path, capsys):
    p = tmp_path / "m.txt"
    p.write_text("x")
    assert main(["compress", str(p), "-o", str(tmp_path / "x.cmz")]) == 1
    assert "expected a file ending in" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt"])
def test_decompress(npz, tmp_path, capsys, suffix):
    src, sd = npz
    out = tmp_path / "m.cmz"
    assert main(["compress", str(src), "-o", str(out), "--sparsity", "0.5"]) == 0
    dense = tmp_path / f"d{suffix}"
    assert main(["decompress", str(out), "-o", str(dense)]) == 0
    from cmodel.encode.checkpoints import load_tensors

    back = {k: np.asarray(v) for k, v in load_tensors(dense).items()}
    expected = cmodel.load_file(out)
    assert sorted(back) == sorted(expected)  # safetensors lists names sorted
    for k in expected:
        assert np.array_equal(back[k], expected[k])
    capsys.readouterr()


def test_info_shows_sparsity_and_fillers(tmp_path, capsys):
    w = np.zeros((4, 40), np.float32)
    w[:, 39] = 1.0  # a gap of 39 zeros per row: with r=4, 39 >> 4 = 2 fillers per row
    w[:, 0] = -1.0
    p = tmp_path / "m.cmz"
    cmodel.save_file({"w": w}, p, rules={"*": {"compress": True, "threshold": 0.0, "index_bits": 4, "bits": 2}})
    assert main(["info", str(p), "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["tensors"][0]
    assert t["fillers"] == 8 and t["kept"] == 8 and abs(t["sparsity"] - 0.95) < 1e-12
    assert main(["info", str(p)]) == 0
    assert "95.0%" in capsys.readouterr().out


def test_bench_decode_runs(npz, tmp_path, capsys):
    src, _ = npz
    out = tmp_path / "m.cmz"
    assert main(["compress", str(src), "-o", str(out), "--sparsity", "0.5"]) == 0
    capsys.readouterr()
    assert main(["bench", "decode", str(out), "--repeats", "2", "--threads", "1", "--streams", "1"]) == 0
    text = capsys.readouterr().out
    assert "fc1.weight" in text and "vs zstd" in text


def test_bench_decode_needs_huffman(npz, tmp_path, capsys):
    src, _ = npz
    out = tmp_path / "m.cmz"
    assert main(["compress", str(src), "-o", str(out), "--coding", "packed"]) == 0
    capsys.readouterr()
    assert main(["bench", "decode", str(out)]) == 1
    assert "Huffman" in capsys.readouterr().err


def test_raw_dtype_float16(tmp_path):
    sd = {"fc.weight": np.ones((64, 64), np.float32), "fc.bias": np.linspace(-1, 1, 64, dtype=np.float32), "steps": np.array(3, np.int64)}
    p = tmp_path / "m.cmz"
    cmodel.save_file(sd, p, options={"raw_dtype": "float16"})
    with cmodel.open(p) as f:
        assert f.record("fc.bias").dtype == "float16" and f.record("steps").dtype == "int64"
        assert np.array_equal(f.read("fc.bias"), sd["fc.bias"].astype(np.float16))
        assert f.record("fc.weight").encoding == "codebook"
