"""Fail if the environment holds packages Veil must never pull in.

* torchvision, tensorboard: crypten's metadata asks for them; Veil does not need them.
* sklearn: the dead PyPI name (the real package is scikit-learn).
* nvidia-* wheels: a CUDA torch pulled onto a machine without a GPU (several GB).
"""

from __future__ import annotations

import shutil
import sys
from importlib import metadata

FORBIDDEN = {"torchvision", "tensorboard", "sklearn"}


def problems(names: set[str], *, gpu_present: bool) -> list[str]:
    found = sorted(n for n in names if n in FORBIDDEN)
    if not gpu_present:
        found += sorted(n for n in names if n.startswith("nvidia-"))
    return found


def main() -> int:
    names = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    gpu_present = shutil.which("nvidia-smi") is not None
    bad = problems(names, gpu_present=gpu_present)
    if bad:
        print("check_env: forbidden packages installed: " + ", ".join(bad), file=sys.stderr)
        print("  remove them (pip uninstall) and re-run `make`; see tools/bootstrap.sh",
              file=sys.stderr)
        return 1
    print(f"check_env: ok ({len(names)} packages, no CUDA wheels/torchvision/tensorboard/sklearn)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
