"""The gateway's OpenAPI document, generated from the app: `python -m musicsplit.gateway.api.openapi [PATH]`.

docs/openapi.json is this output; tests/gateway/api/test_openapi.py fails when it
is out of date (regenerate with the command above).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def spec() -> dict:
    from musicsplit.gateway.app import create_app
    from musicsplit.gateway.settings import GatewaySettings

    # Building the app starts nothing (the service starts in the lifespan).
    return create_app(GatewaySettings(data_dir=Path("/nonexistent"))).openapi()


def render() -> str:
    return json.dumps(spec(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
    out.write_text(render())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
