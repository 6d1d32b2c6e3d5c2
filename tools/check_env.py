"""Fail if the environment holds packages Veil must never pull in.

* torchvision, tensorboard: crypten's metadata asks for them; Veil does not need them.
* sklearn: the dead PyPI name (the real package is scikit-learn).
* nvidia-* wheels: a CUDA torch pulled onto a machine without a GPU (several GB).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata

FORBIDDEN = {"torchvision", "tensorboard", "sklearn"}
# crypten 0.4.1 declares these; Veil installs it with --no-deps and needs none of them
CRYPTEN_LEFT_OUT = {"future", "sklearn", "tensorboard", "torchvision"}
_MISSING = re.compile(r"^(\S+) \S+ requires (\S+), which is not installed\.$")


def problems(names: set[str], *, gpu_present: bool) -> list[str]:
    found = sorted(n for n in names if n in FORBIDDEN)
    if not gpu_present:
        found += sorted(n for n in names if n.startswith("nvidia-"))
    return found


def conflicts(pip_check_output: str) -> list[str]:
    """The lines of ``pip check`` that are not crypten's deliberately missing requirements."""
    out = []
    for line in pip_check_output.splitlines():
        line = line.strip()
        if not line or line.startswith("No broken requirements"):
            continue
        m = _MISSING.match(line)
        if m and m.group(1).lower() == "crypten" and m.group(2).lower() in CRYPTEN_LEFT_OUT:
            continue
        out.append(line)
    return out


def main() -> int:
    names = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    gpu_present = shutil.which("nvidia-smi") is not None
    bad = problems(names, gpu_present=gpu_present)
    if bad:
        print("check_env: forbidden packages installed: " + ", ".join(bad), file=sys.stderr)
        print("  remove them (pip uninstall) and re-run `make`; see tools/bootstrap.sh",
              file=sys.stderr)
        return 1
    check = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "check"],
                           capture_output=True, text=True, check=False)
    broken = conflicts(check.stdout + check.stderr)
    if broken:
        print("check_env: dependency conflicts (pip check):\n  " + "\n  ".join(broken),
              file=sys.stderr)
        return 1
    print(f"check_env: ok ({len(names)} packages, no CUDA wheels/torchvision/tensorboard/sklearn;"
          " crypten's declared future/sklearn/tensorboard/torchvision are left out on purpose)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
