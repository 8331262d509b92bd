"""The one exception type for user-facing mistakes."""


class MetalabError(ValueError):
    """Bad input or a missing resource; the message says what was wrong and what to do.

    The CLI turns it into one ``metalab: error: ...`` line and exit code 2.
    """


def require_positive(**values: int) -> None:
    """Raise :class:`MetalabError` unless every keyword value is an integer >= 1."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MetalabError(f"{name} must be a positive integer, got {value!r}")


def require_non_negative(zero_means: str = "", **values: int) -> None:
    """Raise :class:`MetalabError` unless every keyword value is an integer >= 0; ``zero_means``
    says what 0 stands for in the message (e.g. ``"never"``)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            meaning = f" (0: {zero_means})" if zero_means else ""
            raise MetalabError(f"{name} must be an integer >= 0{meaning}, got {value!r}")


class NonFiniteError(MetalabError):
    """A loss or gradient became NaN or infinite (the trainer may skip the batch instead of stopping)."""


def batch_share(meta_batch_size: int, first: int, count: int | None) -> int:
    """The number of tasks ``first .. first + count - 1`` of a meta-batch (``count=None``: to the end).

    Raises:
        MetalabError: the share does not lie inside the meta-batch.
    """
    count = meta_batch_size - first if count is None else count
    if not (0 <= first and 0 < count and first + count <= meta_batch_size):
        raise MetalabError(f"tasks {first}..{first + count - 1} are not in a meta-batch of {meta_batch_size}")
    return count
