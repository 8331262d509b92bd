"""Matching Networks.

References: Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, "Matching Networks for
One Shot Learning", NeurIPS 2016.

Equations of the paper, mapped to lines:
- eq. 1, ``y_hat = sum_i a(x_hat, x_i) y_i``, with eq. 2's attention
  ``a(x_hat, x_i) = softmax_i(c(f(x_hat), g(x_i)))`` and ``c`` the cosine similarity:
  ``scores``: ``cosine_similarity`` gives ``c``; the log of the attention mass that
  falls on the support examples of class ``k`` is
  ``logsumexp`` over those examples (``reduce_by_class``) minus ``logsumexp`` over all of
  them, so ``y_hat`` is never formed outside log space (stable, static shapes);
- the training objective (section 2.2), the log-likelihood of the query labels under
  ``y_hat`` averaged over episodes: the cross-entropy of :meth:`MetricMethod.episode_loss`
  (``scores`` are already normalised log-probabilities, so it is their negative
  log-likelihood);
- appendix A.2, full context embeddings (``fce=True``): ``g(x_i, S) = h_fwd_i + h_bwd_i +
  g'(x_i)`` with a bidirectional LSTM over the support set (:meth:`FullContextEmbedding.support`),
  and ``f(x_hat, S) = attLSTM(f'(x_hat), g(S), K)`` (:meth:`FullContextEmbedding.query`):
  K steps of ``h_hat_k, c_k = LSTM(f'(x_hat), [h_{k-1}, r_{k-1}], c_{k-1})``,
  ``h_k = h_hat_k + f'(x_hat)``, ``r_{k-1} = sum_i softmax_i(h_{k-1}^T g(x_i)) g(x_i)``.
  ``f'`` and ``g'`` are the same conv4 (``encoder``), as in the paper's Omniglot model.

The bidirectional LSTM reads the support set in the order it is given, so with ``fce``
the predictions depend on that order, as in the paper; without it they do not.
Batch norm keeps running statistics (training: batch statistics of support and query
together; evaluation: running averages), as for Prototypical Networks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metalab.algorithms.metric import MetricMethod
from metalab.algorithms.registry import register
from metalab.data.benchmarks import TaskSpec
from metalab.func import cosine_similarity, reduce_by_class
from metalab.utils.errors import MetalabError, require_positive


@dataclass(frozen=True)
class MatchingNetConfig:
    """Hyper-parameters of Matching Networks.

    Attributes:
        fce: full context embeddings (appendix A.2): a bidirectional LSTM over the support
            embeddings and an attention LSTM for the query embeddings.
        fce_steps: processing steps K of the attention LSTM (the paper does not state K).
        scale: multiplies the cosine similarities before the softmax (an inverse
            temperature); 1 is the paper's attention kernel. With 1 the attention over cosines
            in [-1, 1] stays soft and training is slow; the Omniglot preset uses 10 (both
            measured in docs/RESULTS.md).
    """

    fce: bool = False
    fce_steps: int = 5
    scale: float = 1.0

    def __post_init__(self) -> None:
        require_positive(fce_steps=self.fce_steps)
        if not (self.scale > 0 and self.scale != float("inf")):
            raise MetalabError(f"scale must be a positive finite number, got {self.scale!r}")


class FullContextEmbedding(nn.Module):
    """Appendix A.2 of Vinyals et al. 2016: support and query embeddings conditioned on the whole support set.

    Args:
        dim: embedding size ``d`` (the LSTMs' hidden size, so the skip connections add up).
        steps: processing steps K of the attention LSTM.
    """

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.support_lstm = nn.LSTM(dim, dim, bidirectional=True)
        # one LSTM step whose recurrent input is [h_{k-1}, r_{k-1}] (2d) and state is d
        self.query_gates = nn.Linear(3 * dim, 4 * dim)
        self.steps = steps

    def support(self, g: Tensor) -> Tensor:
        """``(n, d)`` support embeddings ``g'(x_i)`` in sequence order -> ``g(x_i, S)``."""
        h, _ = self.support_lstm(g[:, None])  # (n, 1, 2d): the set as one sequence
        forward, backward = h[:, 0].chunk(2, dim=-1)
        return g + forward + backward

    def query(self, f: Tensor, g: Tensor) -> Tensor:
        """``(m, d)`` query embeddings ``f'(x_hat)`` and ``(n, d)`` ``g(S)`` -> ``f(x_hat, S)``."""
        h = torch.zeros_like(f)
        c = torch.zeros_like(f)
        for _ in range(self.steps):
            r = torch.softmax(h @ g.T, dim=-1) @ g
            i, forget, o, u = self.query_gates(torch.cat([f, h, r], dim=-1)).chunk(4, dim=-1)
            c = torch.sigmoid(forget) * c + torch.sigmoid(i) * torch.tanh(u)
            h = torch.sigmoid(o) * torch.tanh(c) + f
        return h


@register
class MatchingNet(MetricMethod):
    """Soft nearest neighbour over the support set: cosine attention, optional full context embeddings."""

    name = "matching_net"
    Config = MatchingNetConfig

    def __init__(self, spec: TaskSpec, config: MatchingNetConfig):
        super().__init__(spec, config)
        self.context = FullContextEmbedding(self.encoder.embedding_dim, config.fce_steps) if config.fce else None

    def scores(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        """Embeddings ``(n, d)``, ``(n,)``, ``(m, d)`` -> ``(m, n_way)`` log class probabilities."""
        if self.context is not None:
            support = self.context.support(support)
            query = self.context.query(query, support)
        similarity = self.config.scale * cosine_similarity(query, support)  # (m, n)
        return reduce_by_class(similarity, support_y, n_way, "logsumexp") - similarity.logsumexp(dim=-1, keepdim=True)
