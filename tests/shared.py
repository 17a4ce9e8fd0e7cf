"""Where the project's shared folder (the seed documents, the RFC 4475 corpus) is.

It lies beside the repository (``../shared`` from the repository root) in a normal checkout
and in CI's clone; ``IMBILL_SHARED`` points elsewhere. A test that needs it and cannot find
it fails under ``CI=true`` (where the folder is always laid out) and is skipped with the
reason elsewhere, never silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["REPOSITORY", "SHARED", "shared_path"]

REPOSITORY = Path(__file__).resolve().parents[1]


def _shared_folder() -> Path:
    if os.environ.get("IMBILL_SHARED"):
        return Path(os.environ["IMBILL_SHARED"])
    return REPOSITORY.parent / "shared"


SHARED = _shared_folder()


def shared_path(relative: str) -> Path:
    """``relative`` inside the shared folder; fails (CI) or skips when it is not there."""
    path = SHARED / relative
    if not path.exists():
        why = (f"{path} not found: the shared folder must lie beside the repository "
               f"({REPOSITORY.parent}/shared) or be named by IMBILL_SHARED")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return path
