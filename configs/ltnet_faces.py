"""The Latent Truth Net (IPA2LT) in the paper's setting: two face datasets, biased differently.

``faces_annotated`` (``bagtricks.data.annotated_faces``): the training people of the
generated faces split into dataset A (40 people), dataset B (40) and an unlabelled pool (40).
A's annotators read fear as surprise 30 % of the time, B's disgust as anger, both with 10 %
uniform errors besides; M_A and M_B, logistic regressions fitted on A and on B, label every
image. Each training image has up to three of the four label columns (A's human, B's human,
M_A, M_B). The backbone is the MLP of ``configs/face_landmarks.py`` on the landmark features;
``python -m bagtricks.studies.latent_truth_study --config=configs/ltnet_faces.py`` trains the
baselines and LTNet from the union run, as the paper does.
"""

import ml_collections

from configs import face_landmarks, ltnet_digits


def get_config() -> ml_collections.ConfigDict:
  config = face_landmarks.get_config()
  config.dataset.name = "faces_annotated"
  config.dataset.dataset_people = (40, 40)
  config.dataset.human_accuracy = 0.9
  config.dataset.bias_a = (4, 3, 0.3)  # fear → surprise.
  config.dataset.bias_b = (5, 6, 0.3)  # disgust → anger.
  config.dataset.annotation_seed = 0
  return ltnet_digits.with_latent_truth(config, num_annotators=4)
