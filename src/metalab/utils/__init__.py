"""L0 utilities: seeding, statistics, atomic IO, dict-of-tensor ops."""

from metalab.utils.allocator import retain_freed_memory
from metalab.utils.errors import MetalabError, NonFiniteError
from metalab.utils.io import atomic_write_bytes, atomic_write_text, atomic_torch_save
from metalab.utils.seeding import derive_seed, make_generator
from metalab.utils.stats import mean_ci95

__all__ = [
    "MetalabError",
    "NonFiniteError",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "derive_seed",
    "make_generator",
    "mean_ci95",
    "retain_freed_memory",
]
