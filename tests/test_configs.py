"""Every config file loads and validates; the ImageNet config carries the paper's full recipe."""

import glob
import importlib
import os

import pytest

from bagtricks import distill, validate
from conftest import REPO

CONFIG_FILES = sorted(os.path.splitext(os.path.basename(p))[0]
                      for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                      if not p.endswith("__init__.py"))


def _config(name):
  return importlib.import_module(f"configs.{name}").get_config()


def test_config_files_are_found():
  assert {"default", "default_mixup", "default_distill", "imagenet_resnet50d",
          "imagenet_resnet152d", "dndt_iris", "dndt_breast_cancer", "dndt_wine", "sdt_digits",
          "sdt_distill_digits", "ndf_digits", "ndf_tabular"} <= set(CONFIG_FILES)


# These distill from a trained run (runs/default, runs/mnist_5k or the ImageNet teacher).
NEEDS_A_TEACHER = ("imagenet_resnet50d", "default_distill", "sdt_distill_digits",
                   "sdt_distill_mnist")


@pytest.mark.parametrize("name", [n for n in CONFIG_FILES if n not in NEEDS_A_TEACHER])
def test_config_validates(name):
  config = _config(name)
  # On the 8 devices, or on those the config asks for.
  validate.validate_config(config, num_local_devices=config.num_devices or 8)


@pytest.mark.parametrize("name, teacher", [("default_distill", "runs/default"),
                                           ("sdt_distill_digits", "runs/default"),
                                           ("sdt_distill_mnist", "runs/mnist_5k")])
def test_distill_configs_name_their_teacher(name, teacher, tmp_path):
  config = _config(name)
  assert config.distill.teacher_workdir == teacher
  config.distill.teacher_workdir = str(tmp_path / "none")
  with pytest.raises(validate.ConfigError, match="train the teacher first"):
    validate.validate_config(config, num_local_devices=8)


def test_imagenet_config_has_the_papers_full_set():
  config = _config("imagenet_resnet50d")
  assert config.model.name == "resnet50d" and config.label_smoothing == 0.1
  assert config.augment.mixup_alpha == 0.2 and config.num_epochs == 200
  assert config.distill.enabled and config.distill.temperature == 20.0
  assert distill.teacher_config(config.distill).model.name == "resnet152d"
  # Without a trained teacher the run stops at once and says what to do.
  with pytest.raises(validate.ConfigError) as info:
    validate.validate_config(config, num_local_devices=8)
  # One problem, on one line.
  assert len(str(info.value).splitlines()) == 1 and "train the teacher first" in str(info.value)


def test_wmt_config_has_the_transformer_papers_recipe():
  config = _config("wmt_transformer_base")
  assert config.model.name == "transformer_base" and config.model.share_embeddings
  assert (config.optimizer.name, config.optimizer.b1, config.optimizer.b2,
          config.optimizer.eps) == ("adam", 0.9, 0.98, 1e-9)
  assert (config.schedule.name, config.schedule.model_dim,
          config.schedule.warmup_steps) == ("noam", 512, 4000)
  assert config.label_smoothing == 0.1 and config.dataset.vocab_size == 37000
  assert (config.seq2seq.beam_size, config.seq2seq.length_penalty) == (4, 0.6)
