"""Objectives for the one training loop."""

from .base import Batch, Objective, ObjectiveOutput, TrainContext
from .flow import FlowMatching
from .repa import Repa

__all__ = ["Batch", "FlowMatching", "Objective", "ObjectiveOutput", "Repa", "TrainContext"]
