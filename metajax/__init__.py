"""metajax: functional meta-learning in JAX."""
from metajax import core
from metajax import data
from metajax import maml
from metajax import models
from metajax import reptile
from metajax.core import MetaState
from metajax.core import Task
from metajax.core import adapt

__version__ = "0.1.0"
__all__ = ["MetaState", "Task", "adapt", "core", "data", "maml", "models", "reptile"]
