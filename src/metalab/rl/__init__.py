"""L1 meta-RL environments and returns: task distributions, 2D navigation, returns and baselines.

Task distributions (:class:`~metalab.rl.tasks.TaskDistribution`) sample the tasks of a
family and switch an environment to one of them; stepping follows gymnasium's ``Env`` API,
so users can plug in their own environments. :mod:`metalab.rl.nav2d` is the 2D navigation
family of the MAML paper, as a gymnasium environment and as a batched torch implementation
(every task and episode of a meta-batch stepped at once). :mod:`metalab.rl.returns` has the
discounted returns, generalised advantage estimates and the linear feature baseline that
policy-gradient methods use.
"""

from metalab.rl.nav2d import BatchedNavigation2D, Nav2DTasks
from metalab.rl.returns import LinearFeatureBaseline, discounted_returns, gae
from metalab.rl.tasks import TaskDistribution

__all__ = ["BatchedNavigation2D", "LinearFeatureBaseline", "Nav2DTasks", "TaskDistribution", "discounted_returns",
           "gae"]
