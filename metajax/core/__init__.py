"""The functional core: task pytrees, the inner loop, losses, shared meta-learner pieces."""
from metajax.core import distributed
from metajax.core import losses
from metajax.core.adapt import AdaptInfo
from metajax.core.adapt import adapt
from metajax.core.meta import TASK_STRATEGIES
from metajax.core.meta import MetaState
from metajax.core.meta import map_tasks
from metajax.core.meta import mean_and_ci95
from metajax.core.meta import mean_task_grads
from metajax.core.meta import resolve_strategy
from metajax.core.tasks import Task
from metajax.core.tasks import check_task
from metajax.core.tasks import num_tasks
from metajax.core.xla_cpu import use_fast_cpu_convolutions

__all__ = [
    "AdaptInfo", "MetaState", "TASK_STRATEGIES", "Task", "adapt", "check_task", "distributed", "losses",
    "map_tasks", "mean_and_ci95", "mean_task_grads", "num_tasks", "resolve_strategy",
    "use_fast_cpu_convolutions",
]
