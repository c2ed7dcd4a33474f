"""Bucket assignment: closest aspect first, then closest size, and no crop beyond the limit."""

from __future__ import annotations

from backend.data.buckets import assign_bucket, crop_fraction

SQUARES = [(64, 64), (128, 128)]


def test_same_aspect_items_go_to_the_nearest_size_not_the_largest():
    assert assign_bucket(32, 32, SQUARES) == (64, 64)
    assert assign_bucket(48, 48, SQUARES) == (64, 64)
    assert assign_bucket(64, 64, SQUARES) == (64, 64)
    assert assign_bucket(96, 96, SQUARES) == (128, 128)  # log-area: nearer 128 than 64
    assert assign_bucket(512, 512, SQUARES) == (128, 128)


def test_aspect_comes_before_size_and_too_much_crop_is_refused():
    buckets = [(64, 64), (128, 96), (96, 128)]
    assert assign_bucket(64, 48, buckets) == (128, 96)  # the 4:3 bucket, even though larger
    assert assign_bucket(48, 64, buckets) == (96, 128)
    assert assign_bucket(64, 128, SQUARES) is None  # a 1:2 image would lose half its height
    assert crop_fraction(64, 128, 64, 64) == 0.5
