"""Where the project's data folders (`templates/`, `splits/`) are found.

They live at the top of the repository, beside the package, as the user asked; a source checkout
or editable install reads them there, and a wheel installs them under `<prefix>/share/caffe-transfer`.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def resource_dir(name: str) -> Path:
    """The folder `templates` or `splits`, from the checkout or the installed share folder."""
    for root in (_REPO, Path(sys.prefix) / "share" / "caffe-transfer"):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"caffe-transfer's {name}/ folder is missing from {_REPO} and {sys.prefix}")
