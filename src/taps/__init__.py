"""taps: task-aware speculative decoding (EAGLE-2 / HASS drafters, combined at inference time)."""

__version__ = "0.1.0"
