"""playmate_jax.shapes.abstract_module builds exactly what nnx.eval_shape with real Rngs builds."""

import jax
import pytest
from flax import nnx

from configs.stage2 import get_config
from playmate_jax.audio import wav2vec2 as w2v
from playmate_jax.generator.factory import model_factory
from playmate_jax.renderer.config import TINY_MODEL_PARAMS
from playmate_jax.renderer.networks import LivePortraitNetworks
from playmate_jax.shapes import abstract_module


def _builders():
  cfg = get_config("tiny")   # stage 2: the DiT with its emotion controller
  hubert = w2v.Wav2Vec2Config(model_type="hubert", conv_dim=(8,) * 2, conv_kernel=(10, 3), conv_stride=(5, 2),
                              hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                              num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
  return {
      "motion DiT": model_factory(cfg, 12),
      "LivePortrait networks": lambda rngs: LivePortraitNetworks(TINY_MODEL_PARAMS, rngs=rngs),
      "wav2vec2 (HuBERT layout)": lambda rngs: w2v.Wav2Vec2Model(hubert, rngs=rngs),
  }


@pytest.mark.parametrize("name", list(_builders()))
def test_same_structure_and_parameters_as_eval_shape(name):
  build = _builders()[name]
  fast = abstract_module(build)
  reference = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
  assert nnx.graphdef(fast) == nnx.graphdef(reference)
  shapes = lambda m: jax.tree.map(lambda x: (x.shape, x.dtype), nnx.to_pure_dict(nnx.state(m)))
  assert shapes(fast) == shapes(reference)
  leaves = jax.tree.leaves(nnx.state(fast))
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)   # nothing allocated
