"""Lab guest: the tiny boot image (kernel + busybox initramfs + static agent)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lab.guest.image import DEFAULT_CACHE, GuestImage, ensure_image

__all__ = ["DEFAULT_CACHE", "GuestImage", "ensure_image"]


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m lab.guest.image` does not import image.py twice.
    if name in __all__:
        from lab.guest import image
        return getattr(image, name)
    raise AttributeError(name)
