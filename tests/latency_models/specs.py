"""The DeiT-Tiny structure as a ModelSpec, for tests that price configs without building the model."""

from pruning.spec import BlockSpec, ModelSpec

DEIT_TINY = ModelSpec(
    name="deit_tiny_patch16_224",
    family="vit",
    blocks=(BlockSpec(heads=3, head_dim=64, embed_dim=192, mlp_hidden=768, tokens_in=196),) * 12,
    num_prefix_tokens=1,
    image_size=(224, 224),
    num_classes=1000,
)
