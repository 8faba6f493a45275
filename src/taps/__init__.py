"""taps: task-aware speculative decoding (EAGLE-2 / HASS drafters, combined at inference time).

`from taps import Decoder` (see `taps.api`) generates from Python; `taps --help` lists the commands.
"""

__version__ = "0.1.0"
__all__ = ["Decoder"]


def __getattr__(name: str):
    """Import the API on first use: `import taps` (and so the CLI) stays light, without torch."""
    if name == "Decoder":
        from taps.api import Decoder

        return Decoder
    raise AttributeError(f"module 'taps' has no attribute {name!r}")
