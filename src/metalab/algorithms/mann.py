"""Memory-augmented neural network (MANN, LSTM controller + LRUA memory) and its LSTM baseline.

References: Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, "One-shot Learning with
Memory-Augmented Neural Networks", ICML 2016.

The task (section 2, :class:`~metalab.data.sequences.SequenceSampler`): an episode is a
sequence ``(x_1, y_1) ... (x_T, y_T)``; at step ``t`` the learner receives ``x_t`` and the
*previous* label ``y_{t-1}`` (one-hot; zeros at ``t = 1``) and predicts ``y_t``. The
meta-loss is the cross-entropy of every step's prediction, averaged over steps and episodes
(the paper's ``L(D; theta)`` of eq. 1 over a meta-batch).

One step of :meth:`MANN._step` (the memory functions are in :mod:`metalab.nn.memory`):

1. controller: ``h_t, c_t = LSTMCell([x_t, onehot(y_{t-1}), r_{t-1}], (h_{t-1}, c_{t-1}))``
   (``r_{t-1}``: the previous step's reads of all heads, concatenated; the share of the gates
   from ``[x_t, y_{t-1}]`` is computed for all steps of a sequence at once, as it does not
   depend on the recurrence);
2. heads (:meth:`MANN._access`): per head a key ``k_t = tanh(W_k h_t + b_k)`` (tanh, as
   in the public re-implementations: the paper does not name the activation) and a
   write-gate logit ``alpha_t = W_a h_t + b_a`` (the paper's "learnable sigmoid gate
   parameter", emitted by the controller per step and head);
3. LRUA write weights ``w^w_t = sigmoid(alpha_t) w^r_{t-1} + (1 - sigmoid(alpha_t))
   w^lu_{t-1}``, with ``w^lu_{t-1}`` marking the ``n = read_heads`` least-used slots of
   ``w^u_{t-1}`` (:func:`~metalab.nn.memory.least_used`, :func:`~metalab.nn.memory.lrua_write_weights`;
   ``MANNConfig(slot_per_head=True)``: head ``h`` gets the ``h``-th least-used slot alone,
   :func:`~metalab.nn.memory.least_used_per_head`);
4. write: the slot of least previous usage is zeroed, then ``M_t(i) = M_{t-1}(i) +
   sum_h w^w_{t,h}(i) k_{t,h}`` (section 3.2, :func:`~metalab.nn.memory.write`);
5. read, *after* the write and with the same key, as in eqs. 2-4 which address ``M_t``:
   ``w^r_t = softmax_i cos(k_t, M_t(i))``, ``r_t = sum_i w^r_t(i) M_t(i)``
   (:func:`~metalab.nn.memory.cosine_read_weights`, :func:`~metalab.nn.memory.read`).
   (Some re-implementations compute the read weights on ``M_{t-1}`` or write a separate
   "add" vector; this follows the paper's equations, and ``MANNConfig(add_vector=True)``
   writes the add vector.);
6. usage ``w^u_t = gamma w^u_{t-1} + sum_h w^r_{t,h} + sum_h w^w_{t,h}`` (eq. 5,
   :func:`~metalab.nn.memory.update_usage`);
7. output ``o_t = W_o [h_t, r_t] + b_o``: logits over the ``n_way`` labels (softmax in the
   cross-entropy).

Labels are one-hot by default. On a benchmark whose :class:`~metalab.data.benchmarks.TaskSpec`
carries a string :class:`~metalab.data.sequences.LabelCode` (the paper's 15-class episodes:
five characters over five symbols, ``BenchmarkConfig(label_length=5)``), the label input is
the concatenated one-hot characters, the output is one softmax per character, the loss of
a step the sum of its characters' cross-entropies, and a step is correct when every
character is.

The memory starts at zero, as do the usage, the previous read weights and the reads.

Deviations from the paper:

- one-hot labels for any number of classes are an extension (the paper's 15-class results
  use string labels, ``label_length=5``);
- no per-sample augmentation by default (the paper translates and rotates the images by
  amounts it does not give; ``BenchmarkConfig(jitter_degrees=..., jitter_pixels=...)`` turns
  it on for the training episodes); the split's 90/180/270-degree rotations are extra
  classes, as in the paper;
- Vinyals et al.'s split: 1028 training characters, 172 for validation (model selection)
  and 423 for testing, where the paper trains on 1200 and tests on 423;
- ``least_used`` marks exactly ``n`` slots (ties to the lower index) where the paper marks every slot
  whose usage is at most the ``n``-th smallest (they differ only on ties).

The paper's episodes: 5 (or 15) classes x 10 instances, 20x20 images (``omniglot-online``).
Optimiser: RMSprop (the paper; learning rate 1e-4, given by the trainer's ``outer_lr``). The
paper gives no other RMSprop setting; ``rmsprop_alpha=0.95`` (squared-gradient decay) and
``rmsprop_momentum=0.9`` are those of the Neural Turing Machine (Graves et al., 2014), the
architecture MANN extends.

Standard N-way K-shot episodes (an extension, so the method runs on every benchmark): the
support set is fed as a sequence with labels one step late, ordered round-robin (the first
shot of every class, then the second shot, ...); each query is then scored by one more step
from the state after the support, with the last support label as label input. The queries
are scored in parallel from that same state, so they do not see each other.

:class:`LSTMBaseline` (registry name ``lstm``) is the paper's LSTM baseline: the same
controller, label-offset input and output layer, without the external memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.base import MetaAlgorithm, MetaOutput, Predictor, check_support, finite
from metalab.algorithms.registry import register
from metalab.data.benchmarks import TaskSpec
from metalab.data.episode import Episode, EpisodeBatch
from metalab.data.sequences import LabelCode, presentation_numbers
from metalab.nn.memory import (cosine_read_weights, least_used, least_used_per_head, lrua_write_weights, read,
                               update_usage, write)
from metalab.utils.errors import MetalabError, require_positive


@dataclass(frozen=True)
class LSTMConfig:
    """Hyper-parameters of the LSTM baseline (and the controller part of MANN).

    Attributes:
        controller_size: LSTM units (the paper: 200).
        rmsprop_alpha: RMSprop's squared-gradient decay.
        rmsprop_momentum: RMSprop's momentum.
        optimizer: the meta-optimiser, ``"rmsprop"`` (the paper's; default) or ``"adam"`` (PyTorch's
            default betas; Deleu's ``ntm-one-shot`` re-implementation trains MANN with Adam at 1e-3
            on one episode per step, e.g. ``--outer-lr 1e-3 --meta-batch-size 1``); the
            ``rmsprop_*`` settings apply to RMSprop only.
    """

    controller_size: int = 200
    rmsprop_alpha: float = 0.95
    rmsprop_momentum: float = 0.9
    optimizer: str = "rmsprop"

    def __post_init__(self) -> None:
        require_positive(controller_size=self.controller_size)
        if self.optimizer not in ("rmsprop", "adam"):
            raise MetalabError(f"optimizer must be 'rmsprop' or 'adam', got {self.optimizer!r}")
        if not 0.0 < self.rmsprop_alpha < 1.0:
            raise MetalabError(f"rmsprop_alpha must be in (0, 1), got {self.rmsprop_alpha!r}")
        if not 0.0 <= self.rmsprop_momentum < 1.0:
            raise MetalabError(f"rmsprop_momentum must be in [0, 1), got {self.rmsprop_momentum!r}")


@dataclass(frozen=True)
class MANNConfig(LSTMConfig):
    """Hyper-parameters of MANN (defaults: the paper's Omniglot model).

    Attributes:
        memory_slots: ``N``, rows of the memory (128).
        memory_width: ``W``, width of a row and of a key (40).
        read_heads: ``H`` heads, each with a key used to write and to read (4); also the
            number ``n`` of least-used slots offered to the writes.
        gamma: decay of the usage weights, in ``[0, 1]`` (0.95).
        key_strength: each head also emits a key strength ``beta = softplus(.) >= 0`` that
            sharpens its read weights, ``softmax_i(beta cos(k, M(i)))``, as in the Neural Turing
            Machine's content addressing (not in Santoro et al.'s eq. 3, hence off by default).
            Without it no read can focus: cosine similarities lie in ``[-1, 1]``, so a read
            weight is at most ``e / (e + (N - 1) / e)``, 0.055 with 128 slots.
        add_vector: each head also emits an add vector ``a_t = tanh(W_a h_t + b_a)``, written
            to memory in place of the key (``M_t(i) = M_{t-1}(i) + sum_h w^w_{t,h}(i) a_{t,h}``),
            as in the public re-implementations (e.g. Deleu's ``ntm-one-shot``); the key then
            only addresses. Santoro et al.'s section 3.2 writes the key itself, hence off by
            default. Written keys make the slot just written match its own key exactly
            (cosine 1), so the read that follows the write is drawn to it. Measured on
            Omniglot 5-class episodes, 100 minutes on one thread with ``key_strength``
            (``benchmarks/results/mann-instance.jsonl``): 37.5 / 88.4 / 91.7 / 94.2 / 95.3 /
            96.1% at the 1st / 2nd / 3rd / 4th / 5th / 10th instance with the add vector,
            33.8 / 84.5 / 88.2 / 91.2 / 92.1 / 93.6% writing the key (the paper: 36.4 / 82.8 /
            91.0 / 92.6 / 94.9 / 98.1%); the add vector's validation accuracy after 4000
            steps (0.80, the record's ``val_curve``) the key-writing model reached after
            about 12000 (``docs/mann_curves.png``, "bench-mann-mann-strength").
        slot_per_head: the least-used share of head ``h``'s write goes to the ``h``-th
            least-used slot alone (one new slot per head and step, as in Deleu's
            ``ntm-one-shot``), instead of every head adding its vector to all ``n`` least-used
            slots (the paper's single ``w^lu`` read literally, which stores one sum of the
            heads' vectors ``n`` times). Off by default: on Omniglot 5-class episodes, 100
            minutes on one thread with ``key_strength`` and ``add_vector``, it reached 37.0 /
            87.8 / 90.9 / 93.3 / 94.2 / 96.0% at the 1st / 2nd / 3rd / 4th / 5th / 10th instance
            against 37.5 / 88.4 / 91.7 / 94.2 / 95.3 / 96.1% for the shared write
            (``benchmarks/results/mann-instance.jsonl``, label "slot per head";
            ``docs/mann_5class_variants_curve.png``).
    """

    memory_slots: int = 128
    memory_width: int = 40
    read_heads: int = 4
    gamma: float = 0.95
    key_strength: bool = False
    add_vector: bool = False
    slot_per_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(memory_slots=self.memory_slots, memory_width=self.memory_width, read_heads=self.read_heads)
        if self.read_heads > self.memory_slots:
            raise MetalabError(
                f"read_heads={self.read_heads} needs at least as many memory_slots, got {self.memory_slots}"
            )
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not 0.0 <= self.gamma <= 1.0:
            raise MetalabError(f"gamma (usage decay) must be a number in [0, 1], got {self.gamma!r}")


class _State(NamedTuple):
    """The recurrent state between steps (batch dim ``B`` first).

    Attributes:
        h, c: ``(B, controller_size)`` LSTM state.
        reads: ``(B, H * W)`` reads of the step, ``r_t``; ``(B, 0)`` without memory.
        memory: MANN: ``(M (B, N, W), usage w^u (B, N), read weights w^r (B, H, N))``;
            ``()`` without memory.
    """

    h: Tensor
    c: Tensor
    reads: Tensor
    memory: tuple[Tensor, ...]

    def map(self, fn: Callable[[Tensor], Tensor]) -> "_State":
        return _State(fn(self.h), fn(self.c), fn(self.reads), tuple(fn(t) for t in self.memory))


def _meta(episode: Episode | EpisodeBatch):
    return episode.metas[0] if isinstance(episode, EpisodeBatch) else episode.meta


@register
class MANN(MetaAlgorithm):
    """LSTM controller with an external memory read by content and written by LRUA."""

    name = "mann"
    Config = MANNConfig

    def __init__(self, spec: TaskSpec, config: LSTMConfig):
        super().__init__(spec, config)
        if not spec.classification:
            raise MetalabError(f"{self.name} is a classifier; use it on omniglot-online or omniglot")
        self.code = spec.labels or LabelCode(1, spec.output_dim)
        self.n_way = spec.output_dim
        self.read_width = self._build_memory()
        self.fed_width = math.prod(spec.input_shape) + self.code.width  # the image and the previous label
        self.controller = nn.LSTMCell(self.fed_width + self.read_width, config.controller_size)
        self.output = nn.Linear(config.controller_size + self.read_width, self.code.width)

    # ------------------------------------------------------------------ memory (LSTMBaseline: none)

    def _build_memory(self) -> int:
        """Create the head layer; return the width of the reads ``H * W``."""
        cfg = self.config
        # per head: a key of width W, one write-gate logit, optionally a key strength and an add vector of width W
        per_head = cfg.memory_width + 1 + cfg.key_strength + cfg.memory_width * cfg.add_vector
        self.heads = nn.Linear(cfg.controller_size, cfg.read_heads * per_head)
        return cfg.read_heads * cfg.memory_width

    def _initial_memory(self, batch: int, like: Tensor) -> tuple[Tensor, ...]:
        """Empty memory, zero usage, zero previous read weights (nothing read before step 1)."""
        cfg = self.config
        return (like.new_zeros(batch, cfg.memory_slots, cfg.memory_width),
                like.new_zeros(batch, cfg.memory_slots),
                like.new_zeros(batch, cfg.read_heads, cfg.memory_slots))

    def _access(self, h: Tensor, memory_state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Write then read (steps 2-6 of the module docstring): ``h`` ``(B, controller_size)`` ->
        reads ``(B, H * W)`` and the new memory state."""
        cfg = self.config
        memory, usage, prev_read = memory_state
        width = cfg.memory_width
        head = self.heads(h).unflatten(-1, (cfg.read_heads, -1))  # (B, H, W + 1 [+ 1] [+ W])
        keys, gate_logit = torch.tanh(head[..., :width]), head[..., width:width + 1]
        strength = F.softplus(head[..., width + 1:width + 2]) if cfg.key_strength else None
        added = torch.tanh(head[..., -width:]) if cfg.add_vector else keys
        fresh = (least_used_per_head if cfg.slot_per_head else least_used)(usage, cfg.read_heads)
        write_w = lrua_write_weights(gate_logit, prev_read, fresh)
        memory = write(memory, write_w, added, usage)
        read_w = cosine_read_weights(keys, memory, strength)
        reads = read(read_w, memory).flatten(1)
        # the usage only selects slots (a sort, argmin): no gradient flows through it, so keep no graph
        usage = update_usage(usage, read_w.detach(), write_w.detach(), cfg.gamma)
        return reads, (memory, usage, read_w)

    # ------------------------------------------------------------------ the shared sequence loop

    def _initial_state(self, batch: int, like: Tensor) -> _State:
        zeros = like.new_zeros(batch, self.config.controller_size)
        return _State(zeros, zeros, like.new_zeros(batch, self.read_width), self._initial_memory(batch, like))

    def _fed_gates(self, x: Tensor, shown: Tensor) -> Tensor:
        """The controller's gate pre-activations from the image ``x`` ``(..., D)`` and the previous
        label ``shown`` ``(..., code.width)``, biases included: ``(..., 4 * controller_size)``.

        They do not depend on the recurrent state, so :meth:`_run` computes them for every step of
        a sequence in one matrix product (and its backward pass forms the gradient of that part of
        the weights once, not once per step).
        """
        ctrl = self.controller
        return F.linear(torch.cat([x, shown], dim=-1), ctrl.weight_ih[:, :self.fed_width], ctrl.bias_ih + ctrl.bias_hh)

    def _reads_weight(self) -> Tensor:
        """The controller's input weights of the reads, ``(4 * controller_size, H * W)``: sliced once
        per sequence, not per step: the backward pass of a slice fills a zero tensor the size of the
        whole weight."""
        return self.controller.weight_ih[:, self.fed_width:]

    def _step(self, state: _State, fed: Tensor, reads_weight: Tensor) -> tuple[Tensor, _State]:
        """One time step from the step's :meth:`_fed_gates` ``(B, 4 * controller_size)`` and
        :meth:`_reads_weight` -> logits ``(B, code.width)`` and the next state.

        The controller is ``nn.LSTMCell`` on ``[x_t, y_{t-1}, r_{t-1}]`` (the same parameters and
        gate order), with the input's share of the gates computed beforehand.
        """
        gates = fed + F.linear(state.h, self.controller.weight_hh)
        if self.read_width:
            gates = gates + F.linear(state.reads, reads_weight)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * state.c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        reads, memory = self._access(h, state.memory)
        return self.output(torch.cat([h, reads], dim=-1)), _State(h, c, reads, memory)

    def _run(self, x: Tensor, y: Tensor) -> tuple[Tensor, _State]:
        """Feed a sequence with labels one step late.

        Args:
            x: ``(B, T, *input_shape)``.
            y: ``(B, T)`` int64 labels; ``y[:, t]`` is an input only at step ``t + 1``.

        Returns:
            logits ``(B, T, code.width)`` (step ``t`` predicts ``y[:, t]``) and the state after step ``T``.
        """
        b = y.shape[0]
        x = x.flatten(2)
        labels = self.code.one_hot(y, x.dtype)
        shown = torch.cat([labels.new_zeros(b, 1, self.code.width), labels[:, :-1]], dim=1)  # y_{t-1}
        state = self._initial_state(b, x)
        logits = []
        reads_weight = self._reads_weight()
        for fed in self._fed_gates(x, shown).unbind(1):
            out, state = self._step(state, fed, reads_weight)
            logits.append(out)
        return torch.stack(logits, dim=1), state

    # ------------------------------------------------------------------ standard N-way K-shot episodes

    def _support_state(self, support_x: Tensor, support_y: Tensor) -> tuple[_State, Tensor]:
        """Run the support ``(B, S, ...)``, ``(B, S)`` round-robin; return the state and the last label one-hot."""
        # stable sort by shot number: shot 1 of every class (in support order), then shot 2, ...
        order = presentation_numbers(support_y).argsort(dim=-1, stable=True)
        rows = torch.arange(order.shape[0], device=order.device).unsqueeze(1)
        y = support_y[rows, order]
        _, state = self._run(support_x[rows, order], y)
        return state, self.code.one_hot(y[:, -1], state.h.dtype)

    def _query_logits(self, state: _State, last_label: Tensor, query_x: Tensor) -> Tensor:
        """Score each query ``(B, Q, ...)`` by one step from ``state``, independently -> ``(B, Q, n_way)``."""
        b, q = query_x.shape[:2]

        def per_query(t: Tensor) -> Tensor:  # (B, ...) -> (B * Q, ...): one copy of the state per query
            return t.unsqueeze(1).expand(b, q, *t.shape[1:]).flatten(0, 1)

        fed = self._fed_gates(query_x.flatten(2).flatten(0, 1), per_query(last_label))
        logits, _ = self._step(state.map(per_query), fed, self._reads_weight())
        return logits.unflatten(0, (b, q))

    # ------------------------------------------------------------------ checks

    def _check(self, episode: Episode | EpisodeBatch) -> None:
        if not episode.is_classification:
            raise MetalabError(
                f"{self.name} classifies, but got float targets (a regression episode); "
                "use it on omniglot-online or omniglot"
            )
        if self.code.length > 1 and not episode.is_online:
            raise MetalabError(
                f"{self.name} was built for string labels ({self.code}), which only online episodes carry; "
                "score a standard N-way K-shot episode with a model built on one-hot labels"
            )
        n_way = _meta(episode).n_way
        if n_way is not None and self.code.length == 1 and n_way != self.n_way:
            raise MetalabError(
                f"{self.name} has a {self.n_way}-way output layer but got {n_way}-way episodes; "
                "train with --train-n-way equal to --n-way"
            )
        if episode.is_online:
            y = episode.query_y
            if y.numel() == 0 or int(y.min()) < 0 or int(y.max()) >= self.code.size:
                raise MetalabError(
                    f"an online episode needs a non-empty sequence of labels in 0..{self.code.size - 1}; "
                    f"got {tuple(y.shape)} labels" + (f" in {int(y.min())}..{int(y.max())}" if y.numel() else "")
                )
        else:
            check_support(episode, self.n_way)

    # ------------------------------------------------------------------ the MetaAlgorithm interface

    def sequence_logits(self, episodes: Episode | EpisodeBatch) -> Tensor:
        """Logits of every step of online episodes, each predicted before its label is shown.

        Args:
            episodes: one online episode (``query_x`` ``(T, *input_shape)``) or a batch of them
                (``(B, T, *input_shape)``).

        Returns:
            ``(B, T, code.width)`` (``B = 1`` for one episode): one group of ``code.alphabet``
            logits per character of the label (with one-hot labels, ``(B, T, n_way)``);
            gradients flow unless called under ``torch.no_grad()``.
        """
        if not episodes.is_online:
            raise MetalabError(
                "sequence_logits runs online episodes (e.g. from the omniglot-online benchmark); "
                "score a standard N-way K-shot episode with adapt(episode)"
            )
        self._check(episodes)
        x, y = episodes.query_x, episodes.query_y
        if isinstance(episodes, Episode):
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        return self._run(x, y)[0]

    def predictions(self, logits: Tensor) -> Tensor:
        """Logits ``(..., code.width)`` -> the predicted labels ``(...)``: the most likely character
        of every position (with one-hot labels, the argmax)."""
        return self.code.labels(logits.unflatten(-1, (self.code.length, self.code.alphabet)).argmax(-1))

    def label_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean over steps of the sum over a label's characters of their cross-entropies
        (with one-hot labels, the cross-entropy); ``logits`` ``(..., code.width)``, ``labels`` ``(...)``."""
        chars = logits.reshape(-1, self.code.alphabet)
        per_char = F.cross_entropy(chars, self.code.digits(labels).flatten(), reduction="none")
        return per_char.view(-1, self.code.length).sum(-1).mean()

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        """Cross-entropy (:meth:`label_loss`) of every step (online batches) or of every query (standard batches)."""
        if batch.is_online:
            logits = self.sequence_logits(batch)
        else:
            self._check(batch)
            state, last = self._support_state(batch.support_x, batch.support_y)
            logits = self._query_logits(state, last, batch.query_x)
        targets = batch.query_y
        loss = finite(self.label_loss(logits, targets), f"{self.name}.meta_loss")
        accuracy = (self.predictions(logits.detach()) == targets).float().mean()
        return MetaOutput(loss, {"loss": loss.item(), "accuracy": accuracy.item()})

    def adapt(self, episode: Episode, steps: int | None = None) -> Predictor:
        """Read a standard episode's support set once; ``steps`` is ignored (no inner loop).

        Returns:
            ``x`` ``(n, *input_shape)`` -> logits ``(n, n_way)``, each ``x`` scored from the
            state after the support set.

        Raises:
            MetalabError: for an online episode, whose predictions depend on the whole
                sequence: use :meth:`evaluate_episode` or :meth:`sequence_logits`.
        """
        if episode.is_online:
            raise MetalabError(
                f"{self.name} has no standalone predictor for an online episode (each step's prediction "
                "depends on the sequence before it); use evaluate_episode(episode) or sequence_logits(episode)"
            )
        self._check(episode)
        with torch.no_grad():
            state, last = self._support_state(episode.support_x.unsqueeze(0), episode.support_y.unsqueeze(0))

        def predict(x: Tensor) -> Tensor:
            with torch.no_grad():
                return self._query_logits(state, last, x.unsqueeze(0))[0]

        return predict

    def evaluate_episode(self, episode: Episode, steps: int | None = None) -> float:
        """Accuracy over all steps of an online episode; query accuracy of a standard one."""
        if not episode.is_online:
            return super().evaluate_episode(episode, steps)
        with torch.no_grad():
            return (self.predictions(self.sequence_logits(episode)[0]) == episode.query_y).float().mean().item()

    def outer_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """RMSprop, as in the paper (which trained with lr 1e-4; see the module docstring), or Adam
        with ``optimizer="adam"``."""
        cfg = self.config
        if cfg.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=lr)
        return torch.optim.RMSprop(self.parameters(), lr=lr, alpha=cfg.rmsprop_alpha, momentum=cfg.rmsprop_momentum)


@register
class LSTMBaseline(MANN):
    """The paper's LSTM baseline: MANN's controller, label-offset input and output, no memory.

    Only the memory hooks differ; the sequence loop, the handling of online and standard
    episodes and the optimiser are MANN's.
    """

    name = "lstm"
    Config = LSTMConfig

    def _build_memory(self) -> int:
        return 0

    def _initial_memory(self, batch: int, like: Tensor) -> tuple[Tensor, ...]:
        return ()

    def _access(self, h: Tensor, memory_state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        return h.new_zeros(h.shape[0], 0), memory_state
