"""The harness behind ``metajax train / eval / plot``: settings, run directories with exact
resume, the training loop and report, checkpoints and plots. It reads the learner registry
and knows no learner's internals."""
