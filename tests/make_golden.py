"""Write the golden samples (run only when adding a NEW event type; never to fix a failure):
python -m tests.make_golden NAME..."""

import json
import sys
from pathlib import Path

import imbill.schemas
from imbill.schemas.codec import encode
from tests.samples import SAMPLES

GOLDEN = Path(__file__).parent / "golden"
AVRO = Path(imbill.schemas.__file__).parent / "avro"

if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(SAMPLES):
        text = (AVRO / f"{name}.avsc").read_text()
        (GOLDEN / f"{name}.avsc").write_text(text)
        (GOLDEN / f"{name}.bin").write_bytes(encode(name, SAMPLES[name]))
        (GOLDEN / f"{name}.json").write_text(json.dumps(SAMPLES[name], default=str, indent=1) + "\n")
        print("wrote", name)
