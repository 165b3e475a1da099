"""The core imports work on a machine without torch (DESIGN §1)."""

import subprocess
import sys

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['safetensors'] = None\n"


def test_import_without_torch():
    code = BLOCK_TORCH + (
        "import cmodel, cmodel.runtime, cmodel.kernels, cmodel.cli\n"
        "import numpy as np, tempfile, os\n"
        "p = os.path.join(tempfile.mkdtemp(), 'a.cmz')\n"
        "cmodel.save_file({'w': np.ones((2, 3), np.float32)}, p)\n"
        "assert cmodel.load_file(p)['w'].sum() == 6\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_old_module_paths_still_import():
    # The flat layout's paths (before the packages by concern) give the same
    # module objects as the new ones (cmodel._moved).
    import cmodel
    import cmodel.encode.encoder
    import cmodel.encoder
    import cmodel.runtime
    import cmodel.runtime.cpu
    import cmodel.train
    from cmodel import quantize
    from cmodel.codecs import quantize as new_quantize
    from cmodel.runtime.backends import cpu

    assert cmodel.encoder is cmodel.encode.encoder
    assert cmodel.encoder.save_file is cmodel.save_file
    assert cmodel.encoder.__spec__.name == "cmodel.encode.encoder"
    assert quantize is new_quantize
    assert cmodel.runtime.cpu is cpu
    assert cmodel.runtime.Session.__module__ == "cmodel.runtime.session"
    assert cmodel.train.Masks.__module__ == "cmodel.train.masks"

