"""The study commands: each trains a set of runs through the one loop and tables them.

  python -m bagtricks.studies.ablate              # the Bag of Tricks refinements one by one
  python -m bagtricks.studies.pretrain_study      # fine-tuning vs scratch
  python -m bagtricks.studies.compare_trees       # trees and forests beside their papers
  python -m bagtricks.studies.compare_embeddings  # center, Git and Circle loss pictures
  python -m bagtricks.studies.compare_multilabel  # partial-label BCE
  python -m bagtricks.studies.design_space        # RegNet design-space error distributions

They share ``runner`` (flags, tables, JSON, pictures).
"""

from bagtricks import cli

# TensorFlow's C++ start-up notices are caught while it is first imported, which a study module
# does through the loop: before any of them is.
cli.quiet_native_logs()
