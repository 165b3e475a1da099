"""The ``cmz`` command (cmodel/cli.py): exit codes 0 / 1 (bad file) / 2
(usage), one line on stderr per error, ``info`` accounting for every byte.

Most tests call ``cmodel.cli.main`` in-process; a few run the installed
console script to cover the entry point itself.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

import cmodel
from cmodel.format import constants as C
from cmodel.cli import main
from cmodel.format.container import ContainerWriter

CMZ = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "cmz"


def run(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``cmz argv`` run in-process."""
    capsys.readouterr()
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse: --version, usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> str:
    assert err.endswith("\n") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err.rstrip("\n")


@pytest.fixture
def model(tmp_path):
    """A file with header padding, segment padding, a 0-d tensor, an empty
    tensor, and non-ASCII names and metadata."""
    p = tmp_path / "model.cmz"
    cmodel.save_file(
        {
            "conv.weight": np.arange(108, dtype=np.float32).reshape(4, 3, 3, 3),
            "steps": np.array(3, np.int64),
            "ü.empty": np.zeros((0, 2), np.float64),
            "mask": np.array([True, False, True]),
        },
        p,
        metadata={"model": "x", "描述": "✓"},
    )
    return p


def test_info_text(capsys, model):
    rc, out, err = run(capsys, "info", str(model))
    assert (rc, err) == (0, "")
    size = model.stat().st_size
    lines = out.splitlines()
    assert lines[0] == f"{model}: .cmz format 1.0, {size:,} bytes, written by cmodel {cmodel.__version__}"
    assert "  描述 = ✓" in lines and "  model = x" in lines
    assert "tensors: 4" in lines
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("  ") and len(line.split()) == 10}
    assert rows["name"][1:] == ["dtype", "shape", "encoding", "bits", "idx", "sparsity", "fillers", "bytes", "segments"]
    # raw tensors: no bits, index bits, sparsity or fillers
    assert rows["conv.weight"][1:] == ["float32", "4×3×3×3", "raw", "-", "-", "-", "-", "432", "data=432"]
    assert rows["steps"][1:] == ["int64", "scalar", "raw", "-", "-", "-", "-", "8", "data=8"]
    assert rows["ü.empty"][1:] == ["float64", "0×2", "raw", "-", "-", "-", "-", "0", "data=0"]
    assert rows["mask"][1:] == ["bool", "3", "raw", "-", "-", "-", "-", "3", "data=3"]
    total = next(line for line in lines if line.strip().startswith("total"))
    assert re.fullmatch(rf"\s+total\s+{size:,}\s+\(file size {size:,}\)", total), total


def test_info_json_accounts_for_every_byte(capsys, model):
    rc, out, err = run(capsys, "info", "--json", str(model))
    assert (rc, err) == (0, "")
    d = json.loads(out)
    lay = d["layout"]
    size = model.stat().st_size
    assert lay["file"] == size
    assert lay["preamble"] == C.PREAMBLE_SIZE
    assert lay["header_padding"] > 0 and lay["segment_padding"] > 0  # both exercised
    assert lay["preamble"] + lay["header"] + lay["header_padding"] + sum(lay["segments"].values()) + lay["segment_padding"] == size
    assert (C.PREAMBLE_SIZE + lay["header"] + lay["header_padding"]) % C.ALIGNMENT == 0
    assert d["format_version"] == "1.0"
    assert d["metadata"] == {"model": "x", "描述": "✓"}
    assert d["producer"] == {"name": "cmodel", "version": cmodel.__version__}
    assert [t["name"] for t in d["tensors"]] == ["conv.weight", "steps", "ü.empty", "mask"]
    with cmodel.open(model) as f:
        for t in d["tensors"]:
            rec = f.record(t["name"])
            s = rec.segments["data"]
            assert t["segments"] == {"data": {"offset": s.offset, "length": s.length, "crc32": s.crc32}}
            assert (t["dtype"], t["shape"], t["encoding"], t["params"], t["bytes"]) == (rec.dtype, list(rec.shape), "raw", {}, s.length)
    assert "描述" in out  # UTF-8 output, not \u escapes


def test_info_without_producer(capsys, tmp_path):
    p = tmp_path / "minimal.cmz"
    with ContainerWriter(p) as w:  # producer is optional (spec §3.2)
        w.add_tensor("x", (2,), "uint8", "raw", {}, {"data": b"\x01\x02"})
        w.write()
    rc, out, err = run(capsys, "info", str(p))
    assert (rc, err) == (0, "")
    assert out.splitlines()[0] == f"{p}: .cmz format 1.0, {p.stat().st_size:,} bytes"
    rc, out, err = run(capsys, "info", "--json", str(p))
    assert rc == 0 and json.loads(out)["producer"] is None


def test_verify_ok(capsys, model):
    rc, out, err = run(capsys, "verify", str(model))
    assert (rc, err) == (0, "")
    assert out == f"{model}: OK (4 tensors, all checks passed)\n"


def test_verify_bad_file_exit_1(capsys, tmp_path):
    p = tmp_path / "bad.cmz"
    p.write_bytes(b"not a cmz file at all, but long enough")
    rc, out, err = run(capsys, "verify", str(p))
    assert (rc, out) == (1, "")
    line = one_error_line(err)
    assert line.startswith(f"cmz: {p}: expected magic") and line.endswith("[check: magic]")


def test_info_bad_file_exit_1(capsys, model):
    blob = bytearray(model.read_bytes())
    blob[-1] ^= 0xFF  # last segment byte: a CRC failure, which info does not check
    blob += b"\x00"  # and a trailing byte, which it does
    model.write_bytes(blob)
    rc, out, err = run(capsys, "info", str(model))
    assert (rc, out) == (1, "")
    assert one_error_line(err).endswith("[check: file_size]")


@pytest.mark.parametrize("command", ["verify", "info"])
def test_missing_path_exit_1(capsys, tmp_path, command):
    p = tmp_path / "missing.cmz"
    rc, out, err = run(capsys, command, str(p))
    assert (rc, out) == (1, "")
    assert one_error_line(err) == f"cmz: {p}: No such file or directory"


def test_directory_path_exit_1(capsys, tmp_path):
    rc, out, err = run(capsys, "verify", str(tmp_path))
    assert (rc, out) == (1, "")
    assert one_error_line(err) == f"cmz: {tmp_path}: Is a directory"


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["verify", "--bogus", "x.cmz"], "unrecognized arguments: --bogus"),
        (["info", "--jsn", "x.cmz"], "unrecognized arguments: --jsn"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required: COMMAND"),
        (["verify"], "required: file"),
        (["--bogus"], "cmz: error: "),  # argparse reports the missing command first
    ],
    ids=["verify-option", "info-option", "command", "no-command", "no-file", "top-option"],
)
def test_usage_errors_exit_2(capsys, argv, fragment):
    rc, out, err = run(capsys, *argv)
    assert (rc, out) == (2, "")
    line = one_error_line(err)
    assert line.startswith("cmz") and "error:" in line and fragment in line


def test_version(capsys):
    rc, out, err = run(capsys, "--version")
    assert (rc, err) == (0, "")
    assert out == f"cmz {cmodel.__version__} (format {C.FORMAT_VERSION[0]}.{C.FORMAT_VERSION[1]})\n"


def test_help_exit_0(capsys):
    rc, out, err = run(capsys, "--help")
    assert (rc, err) == (0, "")
    for command in ("info", "verify", "demo"):
        assert command in out


def test_demo(capsys, tmp_path):
    # The demo trains LeNet-300-100, prunes, quantises, writes one .cmz with
    # its graph and runs it through the runtime; a tiny synthetic run here.
    out_dir = tmp_path / "out"
    rc, out, err = run(capsys, "demo", "--out", str(out_dir), "--synthetic", "--subset", "600", "--epochs", "1")
    assert rc == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["lenet300.cmz", "lenet300.json"]
    path = out_dir / "lenet300.cmz"
    assert str(path) in out
    with cmodel.open(path) as f:
        f.verify()
        assert f.graph is not None
        assert f.tensor_names() == ["ip1.weight", "ip1.bias", "ip2.weight", "ip2.bias", "ip3.weight", "ip3.bias"]
        assert f.record("ip1.weight").shape == (300, 784)
        assert [f.record(n).encoding for n in f.tensor_names()] == ["sparse", "raw"] * 3
    size = path.stat().st_size
    assert f"-> .cmz {size:,} B" in out and "through the runtime" in out and "PyTorch eager" in out and "threads" in out
    assert run(capsys, "verify", str(path))[0] == 0


def test_demo_without_dataset_one_line(capsys, tmp_path, monkeypatch):
    from cmodel.train import datasets

    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    rc, out, err = run(capsys, "demo", "--out", str(tmp_path / "o"))
    assert rc == 1
    assert "apt-get install -y dataset-fashion-mnist" in one_error_line(err)


def test_demo_unwritable_out_exit_1(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    rc, out, err = run(capsys, "demo", "--out", str(blocker))
    assert rc == 1
    assert one_error_line(err).startswith(f"cmz: {blocker}: ")


# --- the installed console script ----------------------------------------------------


def cmz(*argv):
    return subprocess.run([str(CMZ), *argv], capture_output=True, text=True, encoding="utf-8", timeout=60)


def test_script_version_and_verify(model):
    r = cmz("--version")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith(f"cmz {cmodel.__version__} ")
    r = cmz("verify", str(model))
    assert (r.returncode, r.stderr) == (0, "")
    assert "OK" in r.stdout


def test_script_usage_and_missing_file(tmp_path):
    r = cmz("verify", "--bogus", "x.cmz")
    assert r.returncode == 2 and r.stdout == ""
    one_error_line(r.stderr)
    r = cmz("verify", str(tmp_path / "missing.cmz"))
    assert r.returncode == 1 and r.stdout == ""
    assert "No such file or directory" in one_error_line(r.stderr)
