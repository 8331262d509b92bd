"""L3 engine: trainer, evaluator and checkpoints; it knows only the MetaAlgorithm interface."""

from metalab.engine.checkpoint import load_checkpoint, save_checkpoint
from metalab.engine.evaluator import EvalResult, evaluate
from metalab.engine.trainer import TrainConfig, TrainResult, train

__all__ = ["EvalResult", "TrainConfig", "TrainResult", "evaluate", "load_checkpoint", "save_checkpoint", "train"]
