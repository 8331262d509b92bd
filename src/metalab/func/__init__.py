"""L1 functional core: pure functions over parameter dicts."""

from metalab.func.functional import forward, params_of, runs_pure
from metalab.func.inner import grad_and_value, inner_loop
from metalab.func.losses import metric_name, task_loss, task_metric
from metalab.func.meta_lstm import MetaLSTM, MetaLSTMState, preprocess
from metalab.func.prototypes import (
    class_prototypes,
    class_sums,
    cosine_similarity,
    one_hot,
    reduce_by_class,
    squared_euclidean,
)
from metalab.func.rules import SGD, Adam, Clipped, PerParameterSGD, UpdateRule, global_norm
from metalab.func.tasks import TASK_MODES, in_task_order, map_tasks, on_threads, task_shares

__all__ = [
    "SGD",
    "Adam",
    "Clipped",
    "MetaLSTM",
    "MetaLSTMState",
    "PerParameterSGD",
    "global_norm",
    "TASK_MODES",
    "UpdateRule",
    "class_prototypes",
    "class_sums",
    "cosine_similarity",
    "forward",
    "in_task_order",
    "grad_and_value",
    "inner_loop",
    "map_tasks",
    "metric_name",
    "on_threads",
    "one_hot",
    "params_of",
    "preprocess",
    "reduce_by_class",
    "runs_pure",
    "squared_euclidean",
    "task_loss",
    "task_metric",
    "task_shares",
]
