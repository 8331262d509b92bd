"""L2 algorithms: one file per method, all on the MetaAlgorithm interface."""

from metalab.algorithms.anil import ANIL, ANILConfig
from metalab.algorithms.base import MetaAlgorithm, MetaOutput, Predictor
from metalab.algorithms.gradient import GradientConfig, GradientMethod
from metalab.algorithms.mann import MANN, LSTMBaseline, LSTMConfig, MANNConfig
from metalab.algorithms.maml import FOMAML, MAML, MAMLConfig
from metalab.algorithms.maml_rl import MAMLRL, MAMLRLConfig
from metalab.algorithms.matching_net import MatchingNet, MatchingNetConfig
from metalab.algorithms.meta_lstm import MetaLSTMConfig, MetaLSTMLearner
from metalab.algorithms.meta_sgd import MetaSGD, MetaSGDConfig
from metalab.algorithms.protonet import ProtoNet, ProtoNetConfig
from metalab.algorithms.registry import build, get, make_config, names, register
from metalab.algorithms.relation_net import RelationNet, RelationNetConfig
from metalab.algorithms.reptile import Reptile, ReptileConfig
from metalab.algorithms.rl2 import RL2, RL2Config
from metalab.algorithms.siamese import Siamese, SiameseConfig

__all__ = [
    "MAMLRL",
    "MAMLRLConfig",
    "RL2",
    "RL2Config",
    "ANIL",
    "ANILConfig",
    "GradientConfig",
    "GradientMethod",
    "MetaLSTMConfig",
    "MetaLSTMLearner",
    "MetaSGD",
    "MetaSGDConfig",
    "FOMAML",
    "LSTMBaseline",
    "LSTMConfig",
    "MAML",
    "MAMLConfig",
    "MANN",
    "MANNConfig",
    "MatchingNet",
    "MatchingNetConfig",
    "MetaAlgorithm",
    "MetaOutput",
    "Predictor",
    "ProtoNet",
    "ProtoNetConfig",
    "RelationNet",
    "RelationNetConfig",
    "Reptile",
    "ReptileConfig",
    "Siamese",
    "SiameseConfig",
    "build",
    "get",
    "make_config",
    "names",
    "register",
]
