"""The functional core: task pytrees, the inner loop, task strategies, the learner protocol,
the multi-step loop."""
from metajax.core import distributed
from metajax.core import losses
from metajax.core import tree
from metajax.core.adapt import AdaptInfo
from metajax.core.adapt import adapt
from metajax.core.adapt import interleaved_batches
from metajax.core.loop import scan_steps
from metajax.core.loop import train_steps
from metajax.core.meta import TASK_STRATEGIES
from metajax.core.meta import MetaState
from metajax.core.meta import TaskStrategy
from metajax.core.meta import apply_outer_update
from metajax.core.meta import initial_state
from metajax.core.meta import map_tasks
from metajax.core.meta import mean_and_ci95
from metajax.core.meta import mean_task_grads
from metajax.core.meta import resolve_strategy
from metajax.core.protocol import METRICS
from metajax.core.protocol import MetaLearner
from metajax.core.tasks import Task
from metajax.core.tasks import check_task
from metajax.core.tasks import num_tasks
from metajax.core.xla_cpu import use_fast_cpu_convolutions

__all__ = [
    "AdaptInfo", "METRICS", "MetaLearner", "MetaState", "TASK_STRATEGIES", "Task", "TaskStrategy", "adapt",
    "apply_outer_update", "check_task", "initial_state", "interleaved_batches", "distributed", "losses", "map_tasks", "mean_and_ci95", "mean_task_grads",
    "num_tasks", "resolve_strategy", "scan_steps", "train_steps", "tree", "use_fast_cpu_convolutions",
]
