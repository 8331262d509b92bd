"""L2 algorithms: one file per method, all on the MetaAlgorithm interface."""

from metalab.algorithms.anil import ANIL, ANILConfig
from metalab.algorithms.base import MetaAlgorithm, MetaOutput, Predictor
from metalab.algorithms.gradient import GradientConfig, GradientMethod
from metalab.algorithms.maml import FOMAML, MAML, MAMLConfig
from metalab.algorithms.meta_sgd import MetaSGD, MetaSGDConfig
from metalab.algorithms.protonet import ProtoNet, ProtoNetConfig
from metalab.algorithms.registry import build, get, make_config, names, register
from metalab.algorithms.reptile import Reptile, ReptileConfig

__all__ = [
    "ANIL",
    "ANILConfig",
    "GradientConfig",
    "GradientMethod",
    "MetaSGD",
    "MetaSGDConfig",
    "FOMAML",
    "MAML",
    "MAMLConfig",
    "MetaAlgorithm",
    "MetaOutput",
    "Predictor",
    "ProtoNet",
    "ProtoNetConfig",
    "Reptile",
    "ReptileConfig",
    "build",
    "get",
    "make_config",
    "names",
    "register",
]
