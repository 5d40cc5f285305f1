"""The Latent Truth Net (IPA2LT, Zeng et al. 2018) on MNIST digits from three noisy annotators.

The reference repository's simpler setting: the 5,000 MNIST digits (``mnist_5k``, 4,000 train)
each labelled by three simulated annotators 60 %, 70 % and 80 % accurate whose errors are
uniform over the other classes (``digits_annotated``); the default recipe's ResNet-18-D with
the budget of ``configs/mnist_5k.py`` is the latent-truth backbone, and one transition matrix
per annotator starts near the identity (diagonal 0.9). ``latent_truth.method`` picks what it
learns from: ``'ltnet'`` (the paper), ``'union'`` (every label as an example),
``'majority_vote'`` or ``'dawid_skene'`` (the aggregated labels). The paper trains LTNet from a
network trained on the union of the labels: ``python -m bagtricks.studies.latent_truth_study``
does both stages (``init_from``); this config alone trains LTNet from scratch.
"""

import ml_collections

from configs import mnist_5k


def with_latent_truth(config: ml_collections.ConfigDict,
                      num_annotators: int) -> ml_collections.ConfigDict:
  """``config``'s model as the backbone of LTNet with ``num_annotators`` matrices, λ = 0.5."""
  backbone = config.model
  config.model = ml_collections.ConfigDict()
  config.model.name = "latent_truth"
  config.model.backbone = backbone
  config.model.num_annotators = num_annotators
  config.model.init_diagonal = 0.9
  config.task = "latent_truth"
  config.latent_truth = ml_collections.ConfigDict()
  config.latent_truth.method = "ltnet"
  config.latent_truth.annotator_weights = ()
  # λ of the trace penalty (Tanno et al. 2019): without it LTNet started from the union run
  # keeps a hesitant truth behind near-identity T_k (see README, "Latent truth").
  config.latent_truth.trace_weight = 0.5
  # Each T_k entry's gradient is carried by one class's images, a tenth of the batch.
  config.optimizer.param_groups = (("transitions", "^transition_logits$", 20.0),)
  return config


def get_config() -> ml_collections.ConfigDict:
  config = mnist_5k.get_config()
  config.dataset.name = "digits_annotated"
  config.dataset.digits = "mnist_5k"
  config.dataset.annotator_accuracies = (0.6, 0.7, 0.8)
  config.dataset.annotation_seed = 0
  return with_latent_truth(config, num_annotators=3)
