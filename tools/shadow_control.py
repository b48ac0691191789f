"""Switch shadow parity on a running server without restarting it (`make shadow-rate SHADOW_RATE=0`).

The postprocess model is loaded again through Triton's repository API with its live config, only
`shadow_rate` changed: Triton starts the new instance, then retires the old one, so frames keep
being answered. What the repository on disk says is unchanged (the next load uses it again).

    python -m tools.shadow_control --url 127.0.0.1:8000 --rate 0      # off
    python -m tools.shadow_control --url 127.0.0.1:8000 --rate 0.05   # back on
"""

from __future__ import annotations

import argparse
import json

from compress.errors import ServerError, cli_entry
from tools import triton_config as tc
from tools.server import ADMIN_HEADER


def set_shadow_rate(url: str, rate: float, admin_key: str | None = None) -> dict:
    """Reload postprocess with `shadow_rate` = `rate`; returns the parameters now loaded."""
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    if not 0 <= rate <= 1:
        raise tc.ConfigError(f"shadow rate {rate} is outside [0, 1]")
    headers = {ADMIN_HEADER: admin_key} if admin_key else None
    try:
        with http.InferenceServerClient(url, network_timeout=120) as client:
            config = client.get_model_config(tc.POSTPROCESS, headers=headers)
            parameters = config.get("parameters", {})
            if "shadow_rate" not in parameters:
                raise tc.ConfigError("this repository was built without shadow parity",
                                  hint="rebuild it with `make repo` (SHADOW=1, the default)")
            parameters["shadow_rate"] = {"string_value": str(rate)}
            client.load_model(tc.POSTPROCESS, config=json.dumps(config), headers=headers)
            return client.get_model_config(tc.POSTPROCESS, headers=headers)["parameters"]
    except InferenceServerException as error:
        raise ServerError(f"could not reload {tc.POSTPROCESS} at {url}: {(error.message() or str(error)).strip()}",
                          hint="is the server running (`make serve`)? an admin key needs --admin-key") from None


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP address")
    parser.add_argument("--rate", type=float, required=True, help="share of frames shadowed (0: off)")
    parser.add_argument("--admin-key", help="the server's admin key, when its operator APIs are restricted")
    args = parser.parse_args(argv)
    parameters = set_shadow_rate(args.url, args.rate, args.admin_key)
    print(f"shadow parity at {args.url}: rate {parameters['shadow_rate']['string_value']} (postprocess reloaded)")


if __name__ == "__main__":
    main()
