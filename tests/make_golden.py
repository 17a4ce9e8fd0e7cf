"""Write the golden samples: run only when adding a NEW event type or a new version of a
schema, never to fix a failure.

    python -m tests.make_golden NAME...          # a new event type: NAME.avsc, .bin, .json
    python -m tests.make_golden NAME@VERSION...  # a new version of NAME's schema: NAME.vVERSION.*

Every sample stays: tests/test_schemas.py decodes each with today's reader schema."""

import json
import sys
from pathlib import Path

import imbill.schemas
from imbill.schemas.codec import encode
from tests.samples import SAMPLES

GOLDEN = Path(__file__).parent / "golden"
AVRO = Path(imbill.schemas.__file__).parent / "avro"


def write(name: str, version: str | None) -> None:
    stem = name if version is None else f"{name}.v{version}"
    if (GOLDEN / f"{stem}.bin").exists():
        sys.exit(f"{stem} already has a golden sample: samples are never rewritten")
    text = (AVRO / f"{name}.avsc").read_text()
    (GOLDEN / f"{stem}.avsc").write_text(text)
    (GOLDEN / f"{stem}.bin").write_bytes(encode(name, SAMPLES[name]))
    (GOLDEN / f"{stem}.json").write_text(json.dumps(SAMPLES[name], default=str, indent=1) + "\n")
    print("wrote", stem)


if __name__ == "__main__":
    for argument in sys.argv[1:] or sorted(SAMPLES):
        name, _, version = argument.partition("@")
        write(name, version or None)
