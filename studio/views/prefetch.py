"""What the rating views' prefetch shares: items whose images load in parallel leave the loading
area in the order the backend queued them (the oldest first), not in the order their last image
happened to arrive."""

from __future__ import annotations

from collections.abc import Callable


def ready_in_order(loading: dict, complete: Callable[[dict], bool]) -> list[dict]:
    """Pop and return the leading items of ``loading`` (insertion order) that are ``complete``; stop at
    the first that is not, so a later item never overtakes an earlier one still loading."""
    ready = []
    while loading:
        key, first = next(iter(loading.items()))
        if not complete(first):
            break
        ready.append(loading.pop(key))
    return ready
