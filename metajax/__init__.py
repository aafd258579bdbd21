"""metajax: functional meta-learning in JAX."""
from metajax import core
from metajax import data
from metajax import learners
from metajax import maml
from metajax import models
from metajax.core import MetaLearner
from metajax.core import MetaState
from metajax.core import Task
from metajax.core import adapt

__version__ = "0.1.0"
__all__ = ["MetaLearner", "MetaState", "Task", "adapt", "core", "data", "learners", "maml", "models"]
