"""Type aliases shared by every layer."""

from __future__ import annotations

from typing import Dict

from torch import Tensor

Params = Dict[str, Tensor]
"""Parameters as a plain tree: a dict from dotted parameter name to tensor."""
