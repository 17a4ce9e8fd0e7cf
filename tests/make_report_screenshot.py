"""Make docs/report.png, the README's picture of `imbill report`: the report of the test
fixture's projected traffic (tests/report_fixture.py), drawn by headless Chromium, its top
cropped and scaled down.

    .venv/bin/python -m tests.make_report_screenshot
"""

from __future__ import annotations

import subprocess
import tempfile
from datetime import timedelta
from pathlib import Path

from PIL import Image

from imbill.projections.models import connect
from imbill.projections.report_data import report_data
from imbill.report import render_report
from tests.report_fixture import ENVIRONMENT, HOURS, START, project_traffic

OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "report.png"
WIDTH, HEIGHT, SHOWN = 1060, 1120, 720


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/imbill.db"
        project_traffic(url)
        engine = connect(url)
        data = report_data(engine, environment=ENVIRONMENT, since=START, until=START + timedelta(hours=HOURS))
        engine.dispose()
        page, shot = Path(folder, "report.html"), Path(folder, "report.png")
        page.write_text(render_report(data))
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--force-device-scale-factor=1", f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}",
                        page.as_uri()], check=True, capture_output=True, timeout=120)
        image = Image.open(shot).convert("RGB")
        small = image.resize((SHOWN, round(image.height * SHOWN / image.width)), Image.LANCZOS)
        OUTPUT.parent.mkdir(exist_ok=True)
        small.quantize(colors=96).save(OUTPUT, optimize=True)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
