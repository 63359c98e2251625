"""The contract, the golden model and the driver import without Amaranth.

Why: the driver reaches the RTL only through the simulation backends in
`sim/` (and the FPGA flow through `flow/`), so a host without the HDL
toolchain can compile layers and run the golden model. A subprocess makes
`amaranth` unimportable, imports every module of `contract`, `pymodel` and
`sw_driver`, and checks no Amaranth module got loaded.
"""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    class NoAmaranth(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "amaranth":
                raise ImportError(f"amaranth is unimportable in this test ({name})")

    sys.meta_path.insert(0, NoAmaranth())
    for package in ("contract", "pymodel", "sw_driver"):
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{package}.{info.name}")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "amaranth")
    assert not loaded, loaded
    print("ok")
    """
)


def test_contract_pymodel_and_driver_import_without_amaranth():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
