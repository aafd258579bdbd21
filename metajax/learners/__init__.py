"""Every meta-learning algorithm as a factory returning a :class:`~metajax.core.MetaLearner`.

=================  =========================================================
``maml``           :func:`metajax.learners.gradient.maml` (and ``fomaml``,
                   ``meta_sgd``, ``anil``, ``maml_plus_plus``, ``reptile``)
``imaml``          :func:`metajax.learners.implicit.imaml`
``protonet``       :func:`metajax.learners.metric.prototypical` (and
                   ``matching``, ``relation``)
``rnn``            :func:`metajax.learners.recurrent.black_box_rnn`
``meta-lstm``      :func:`metajax.learners.recurrent.meta_lstm`
``learned-opt``    :func:`metajax.learners.learned_opt.learned_optimizer`
=================  =========================================================

:mod:`metajax.learners.registry` names them for the CLI, benchmarks and tests.
"""
from metajax.learners import forward
from metajax.learners import gradient
from metajax.learners import implicit
from metajax.learners import learned_opt
from metajax.learners import metric
from metajax.learners import recurrent
from metajax.learners import registry
from metajax.learners.forward import LearnerConfig
from metajax.learners.gradient import MAMLConfig
from metajax.learners.gradient import ReptileConfig
from metajax.learners.gradient import RunningStats
from metajax.learners.gradient import anil
from metajax.learners.gradient import fomaml
from metajax.learners.gradient import is_batch_norm
from metajax.learners.gradient import maml
from metajax.learners.gradient import maml_plus_plus
from metajax.learners.gradient import meta_sgd
from metajax.learners.gradient import reptile
from metajax.learners.implicit import IMAMLConfig
from metajax.learners.implicit import imaml
from metajax.learners.learned_opt import LearnedOptimizerConfig
from metajax.learners.learned_opt import learned_optimizer
from metajax.learners.learned_opt import lstm_optimizer
from metajax.learners.metric import matching
from metajax.learners.metric import prototypical
from metajax.learners.metric import relation
from metajax.learners.recurrent import black_box_rnn
from metajax.learners.recurrent import meta_lstm
from metajax.learners.recurrent import meta_lstm_optimizer
from metajax.learners.registry import REGISTRY
from metajax.learners.registry import Setup
from metajax.learners.registry import register

__all__ = [
    "IMAMLConfig", "LearnedOptimizerConfig", "LearnerConfig", "MAMLConfig", "REGISTRY", "ReptileConfig", "RunningStats", "Setup",
    "anil", "black_box_rnn", "fomaml", "forward", "gradient", "imaml", "implicit", "is_batch_norm", "learned_opt", "learned_optimizer", "lstm_optimizer", "maml",
    "maml_plus_plus", "matching", "meta_lstm", "meta_lstm_optimizer", "meta_sgd", "metric", "prototypical",
    "recurrent", "register", "registry", "relation", "reptile",
]
